"""int8 absmax quantization: a weight as 8-bit integers and one float scale per row (or per block).

    scale = absmax / 127          q = round(w / scale) in -127..127          w ~ q * scale

Symmetric: 0 stays exactly 0 and -127..127 is centred on it; -128 is left unused, so that +absmax and -absmax both
fit. Per output channel (one scale per row of W (out, in)): rows of a trained weight differ in scale by a lot, and a
single scale for the whole matrix would spend the 8 bits of small rows on a range they never use. Blockwise (one
scale per `block_size` consecutive values) goes further when a row has outliers, at the price of more scales.

Decoding one token reads every weight once, so on a CPU it waits on memory, not arithmetic: int8 weights are 4
times fewer bytes to read than fp32. torch._weight_int8pack_mm multiplies by the int8 weight directly (CPU, x in
fp32/bf16/fp16); the fallback dequantizes the layer's weight and calls F.linear. A third kernel, "fbgemm"
(torch.ops.quantized.linear_dynamic), is not weight-only: it also rounds each call's activations to int8 (one scale
per call) and multiplies int8 by int8; torch has deprecated the quantized tensors it packs its weight into, so it is
here as a point of comparison only. bench/bench_quant.py times all three.
"""
import torch
import torch.nn.functional as F

QMAX = 127


@torch.no_grad()
def quantize_int8(w):
    """Per output channel: w (out, in) -> (q (out, in) int8, scale (out,) float32)."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / QMAX  # (out,); clamp: an all-zero row has scale ~0, q = 0
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8).contiguous()  # the int8 kernel wants rows
    return q, scale


def dequantize_int8(q, scale, dtype=torch.float32):
    return (q.to(torch.float32) * scale[:, None]).to(dtype)


@torch.no_grad()
def quantize_int8_blockwise(w, block_size=64):
    """Per block of block_size consecutive values (row-major; numel divisible by block_size):
    w -> (q (numel // block_size, block_size) int8, scale (numel // block_size,) float32)."""
    if w.numel() % block_size:
        raise ValueError(f"{w.numel()} values do not split into blocks of {block_size}: pick a divisor of in_features")
    return quantize_int8(w.reshape(-1, block_size))  # a block is a row of the reshaped weight


def dequantize_int8_blockwise(q, scale, shape, dtype=torch.float32):
    return dequantize_int8(q, scale, dtype).view(shape)


def int8pack_available(x):
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and hasattr(
        torch, "_weight_int8pack_mm")


def fbgemm_pack(q, scale, bias=None):
    """q (out, in) int8 and scale (out,) as the packed weight torch.ops.quantized.linear_dynamic takes (CPU)."""
    qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())


def int8_linear(x, q, scale, bias=None, kernel="int8pack", packed=None):
    """x (..., in) @ (q * scale)^T + bias -> (..., out) in x's dtype. kernel: "int8pack" (torch's int8-weight
    matmul, where it exists for x's device and dtype), "dequantize" (the weight back to x's dtype, then F.linear),
    or "fbgemm" (activations rounded to int8 as well; packed = fbgemm_pack(q, scale, bias), which holds the bias)."""
    if kernel == "fbgemm":
        # reduce_range: 7-bit activations, as torch's own dynamic Linear asks for. Without VNNI (AVX2, e.g. Zen 3)
        # fbgemm adds pairs of uint8 x int8 products in int16, which saturates on 8-bit activations
        y = torch.ops.quantized.linear_dynamic(x.float().reshape(-1, x.size(-1)), packed, reduce_range=True)  # (N, out)
        return y.view(*x.shape[:-1], q.size(0)).to(x.dtype)
    if kernel == "int8pack" and int8pack_available(x):
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), q, scale.to(x.dtype))  # (N, out) from (N, in)
        y = y.view(*x.shape[:-1], q.size(0))
        return y + bias.to(x.dtype) if bias is not None else y
    if kernel not in ("int8pack", "dequantize"):
        raise ValueError(f"kernel={kernel!r}: use 'int8pack', 'dequantize' or 'fbgemm'")
    return F.linear(x, dequantize_int8(q, scale, x.dtype), None if bias is None else bias.to(x.dtype))
