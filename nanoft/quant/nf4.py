"""NF4, 4-bit NormalFloat (Dettmers et al., QLoRA, 2023), with double quantization of its scales.

A weight matrix is cut into blocks of 64 consecutive values. Each block is divided by its largest magnitude (its
absmax), which puts every value in [-1, 1], and each value is replaced by the index of the nearest of 16 code values:
4 bits. To read it back, look the index up and multiply by the block's absmax.

Which 16 values? Pretrained weights are close to normally distributed, and so are blocks of them after dividing
by the absmax. Code values placed at quantiles of the normal distribution get equally many weights each, so no
code is wasted on values that hardly occur: that is what makes NF4 better than 16 evenly spaced values (int4).

Double quantization: one fp32 absmax per 64 weights costs 32 / 64 = 0.5 bit per weight. QLoRA quantizes those
scales too, to 8 bits in blocks of 256 (after subtracting their mean, since they are all positive), which costs
8 / 64 + 32 / (64 * 256) = 0.127 bit per weight instead: 4.127 bits per weight in all.

The layout is bitsandbytes' (quantize_4bit with quant_type="nf4", compress_statistics=True), so tests can compare
code for code: two codes per byte with the first in the high nibble, absmax of each block by the same arithmetic,
ties between two code values sent to the lower one, and the scales quantized with bitsandbytes' 8-bit dynamic code.
"""
from dataclasses import dataclass
from typing import Optional

import torch

BLOCK_SIZE = 64  # weights per absmax: QLoRA's choice (smaller blocks = more precision, more scale overhead)
SCALE_BLOCK_SIZE = 256  # absmax values per second-level scale


def normal_float_code(bits=4):
    """The 2**bits NF4 code values, sorted, in [-1, 1], with exactly one 0 (float32; 16 values for 4 bits).

    An exact zero: padding, masked and pruned weights are 0 and must come back as 0; a symmetric code with an even
    number of values (16) would have no zero, its two middle values at +-a. So the code is asymmetric: 0, 2**(bits-1)
    positive values and one fewer negative ones, each side at evenly spaced quantiles of N(0, 1) from the middle
    outwards, each normalised by its outermost one so that both ends are exactly -1 and 1.

    The outermost quantile cannot be 1 (the normal quantile of 1 is infinite). With n equal-probability bins the
    last one is centred on 1 - 1 / (2 n); bitsandbytes takes the mean of that for n = 15 and n = 16 (0.9677083),
    and so do we, which gives its table to within 1e-6."""
    n = 2 ** bits
    offset = ((1 - 1 / (2 * (n - 1))) + (1 - 1 / (2 * n))) / 2  # 0.96770833 for 4 bits
    half = n // 2
    # float32 linspace as bitsandbytes computes it, then the normal quantile function in float64
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1)[:-1].double())  # half values, largest first
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, half)[:-1].double())  # half - 1 values
    code = torch.cat([negative / negative.abs().max(), torch.zeros(1, dtype=torch.float64), positive / positive.max()])
    return code.sort().values.float()


def dynamic_code():
    """bitsandbytes' signed 8-bit "dynamic" code (Dettmers, 8-bit optimizers): 256 sorted values in [-1, 1],
    0 and 1 included. For d = 0..6 there are 2**d values of each sign, evenly spread over the decade
    [10**(d - 7), 10**(d - 6)] (the midpoints of 2**d equal steps from 0.1 to 1, times 10**(d - 6)): a float-like
    code with a 7-decade range, more values per decade as the magnitude grows. The mean-centred block scales it
    stores are small numbers of both signs, and it keeps their relative error small at every magnitude."""
    values = [0.0, 1.0]
    for d in range(7):
        edges = torch.linspace(0.1, 1, 2 ** d + 1)  # float32, as bitsandbytes computes it, so the values agree exactly
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += (10 ** (d - 6) * mids).tolist() + (-(10 ** (d - 6)) * mids).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


NF4_CODE = normal_float_code()
DYNAMIC_CODE = dynamic_code()


def quantize_blockwise(x, code, block_size):
    """Nearest code value for every element of x, per block of block_size elements scaled by its absmax.
    -> (codes (n,) uint8, absmax (n_blocks,) float32); n = x.numel(), the last block padded with zeros."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    flat = torch.nn.functional.pad(flat, (0, -n % block_size))  # zeros change no block's absmax
    blocks = flat.view(-1, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    # times the reciprocal rather than a division, as bitsandbytes computes it: values on a tie between two code
    # values then fall on the same side in both; clamp_min keeps an all-zero block at 0 instead of 0/0
    scaled = (blocks * (1.0 / absmax.clamp_min(1e-38))[:, None]).clamp(-1, 1)
    # nearest of the sorted code values = how many midpoints between neighbours lie below the value; bucketize
    # puts a value that sits exactly on a midpoint into the lower bin, as bitsandbytes does
    midpoints = (code[:-1] + code[1:]) / 2
    codes = torch.bucketize(scaled.reshape(-1), midpoints.to(scaled.device)).to(torch.uint8)
    return codes[:n], absmax


def dequantize_blockwise(codes, absmax, code, block_size, dtype=torch.float32):
    """Inverse of quantize_blockwise: code[codes] times each block's absmax -> (n,) of dtype."""
    n = codes.numel()
    values = code.to(codes.device)[codes.long()]
    values = torch.nn.functional.pad(values, (0, -n % block_size)).view(-1, block_size)  # (n_blocks, block_size)
    return (values * absmax[:, None]).reshape(-1)[:n].to(dtype)


def pack_4bit(codes):
    """(n,) codes in 0..15 -> (ceil(n / 2),) uint8 bytes, first code of each pair in the high nibble."""
    codes = torch.nn.functional.pad(codes, (0, codes.numel() % 2))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed, n):
    """Inverse of pack_4bit: (ceil(n / 2),) bytes -> (n,) codes."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]  # (bytes, 2) -> pairs back in order


@dataclass
class NF4Tensor:
    """A weight in NF4: what is stored, and the shape it came from."""
    packed: torch.Tensor  # (ceil(numel / 2),) uint8, two 4-bit codes per byte
    absmax: Optional[torch.Tensor]  # (n_blocks,) float32, without double quantization; else None
    scale_codes: Optional[torch.Tensor]  # (n_blocks,) uint8: each block's absmax, minus scale_offset, in DYNAMIC_CODE
    scale_absmax: Optional[torch.Tensor]  # (ceil(n_blocks / 256),) float32: the second-level scales
    scale_offset: Optional[torch.Tensor]  # () float32: the mean absmax, taken out before quantizing the absmaxes
    shape: torch.Size
    block_size: int = BLOCK_SIZE
    scale_block_size: int = SCALE_BLOCK_SIZE

    def tensors(self):
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def nbytes(self):
        """Bytes stored: codes and scales (shape and block sizes are a few integers)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def bits_per_parameter(self):
        return 8 * self.nbytes() / self.shape.numel()


@torch.no_grad()
def quantize_nf4(w, block_size=BLOCK_SIZE, double_quant=True, scale_block_size=SCALE_BLOCK_SIZE):
    """A weight (any shape, any float dtype) -> NF4Tensor: NF4 codes per block of block_size, with the blocks'
    absmax in fp32, or (double_quant) in 8 bits per block of scale_block_size."""
    codes, absmax = quantize_blockwise(w, NF4_CODE, block_size)
    q = NF4Tensor(pack_4bit(codes), absmax, None, None, None, w.shape, block_size, scale_block_size)
    if double_quant:
        # every absmax is positive and they cluster around their mean: centred, they use both signs of the code
        q.scale_offset = absmax.mean()
        q.scale_codes, q.scale_absmax = quantize_blockwise(absmax - q.scale_offset, DYNAMIC_CODE, scale_block_size)
        q.absmax = None
    return q


def block_absmax(q: NF4Tensor):
    """The (n_blocks,) absmax of each block, from fp32 or from its double quantization."""
    if q.absmax is not None:
        return q.absmax
    centred = dequantize_blockwise(q.scale_codes, q.scale_absmax, DYNAMIC_CODE, q.scale_block_size)
    return centred + q.scale_offset


def dequantize_nf4(q: NF4Tensor, dtype=torch.float32):
    """NF4Tensor -> the weight in dtype, shape q.shape. Computed in fp32 (as bitsandbytes), then cast."""
    codes = unpack_4bit(q.packed, q.shape.numel())
    return dequantize_blockwise(codes, block_absmax(q), NF4_CODE, q.block_size, dtype).view(q.shape)
