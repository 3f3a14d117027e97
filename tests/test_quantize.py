"""NF4 and int8 against real references: bitsandbytes (its CPU NF4 and its 8-bit dynamic code), torchao's NF4Tensor,
torch's int8 weight-only matmul; gradcheck of the frozen layers; loading a checkpoint straight into 4 bits; QLoRA and
QAT. Tiny tensors and models: the file runs in seconds."""
import warnings

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes.functional")
transformers = pytest.importorskip("transformers")

from nanoft import BERT, GPT2  # noqa: E402
from nanoft.quant.int8 import (dequantize_int8, dequantize_int8_blockwise, int8_linear, quantize_int8,  # noqa: E402
                         quantize_int8_blockwise)
from nanoft.quant.lora import LoRALinear, add_lora  # noqa: E402
from nanoft.quant.nf4 import (DYNAMIC_CODE, NF4_CODE, block_absmax, dequantize_nf4, normal_float_code,  # noqa: E402
                        quantize_nf4, unpack_4bit)
from nanoft.quant.qat import QATLinear, convert_qat, prepare_qat  # noqa: E402
from nanoft.quant.quantize import Int8Linear, NF4Linear, load_quantized, model_nbytes, quantize_model  # noqa: E402


def weight(out=256, inp=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.02
    w[3, :64] = 0.0  # an all-zero block, as padding or pruning leave
    w[5, 7] = 0.3  # an outlier, as trained weights have
    return w


def near_tie(scaled, code, a, b, tol):
    """Whether each scaled value is within tol of the midpoint between code values a and b (index tensors)."""
    return ((scaled - (code[a] + code[b]) / 2).abs() <= tol) & ((a - b).abs() == 1)


def scaled_values(w, block=64):
    blocks = w.reshape(-1, block)
    return (blocks * (1.0 / blocks.abs().amax(1, keepdim=True).clamp_min(1e-38))).reshape(-1)


def test_nf4_code_is_bitsandbytes_table():
    ref = bnb.get_4bit_type("nf4", device="cpu")
    assert (NF4_CODE - ref).abs().max() < 1e-6
    # its shape, from the derivation: 7 negative values, an exact 0, 8 positive values, both ends exactly +-1
    assert (NF4_CODE < 0).sum() == 7 and (NF4_CODE == 0).sum() == 1 and (NF4_CODE > 0).sum() == 8
    assert NF4_CODE[0] == -1 and NF4_CODE[-1] == 1
    assert normal_float_code(3).numel() == 8 and (normal_float_code(3) == 0).sum() == 1


def test_dynamic_code_is_bitsandbytes_create_dynamic_map():
    assert torch.equal(DYNAMIC_CODE, bnb.create_dynamic_map())


def test_nf4_codes_and_dequantized_weights_equal_bitsandbytes():
    w = weight()
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_nf4(w, double_quant=False)
    assert torch.equal(ours.absmax, state.absmax)
    a, b = unpack_4bit(ours.packed, w.numel()).long(), unpack_4bit(theirs.view(-1), w.numel()).long()
    differ = a != b
    # a code may differ only where the value sits on a tie between two neighbouring code values
    ties = near_tie(scaled_values(w), NF4_CODE, a, b, 1e-6)
    assert bool((ties | ~differ).all()) and differ.float().mean() <= 1e-3
    ref = bnb.dequantize_4bit(theirs, state)
    same = ~differ.view(w.shape)  # there, only the two tables' difference (< 1e-6) remains
    assert (dequantize_nf4(ours)[same] - ref[same]).abs().max() <= 1e-6 * w.abs().max()
    assert (dequantize_nf4(ours) - w).abs().max() <= ours.absmax.max() * (NF4_CODE.diff().max() / 2 + 1e-6)


def test_double_quantized_scales_equal_bitsandbytes():
    w = weight(512, 256)  # 2048 blocks: 8 blocks of 256 scales
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize_nf4(w)
    assert torch.equal(unpack_4bit(ours.packed, w.numel()), unpack_4bit(theirs.view(-1), w.numel()))
    assert torch.allclose(ours.scale_offset, state.offset, rtol=1e-6)
    assert torch.equal(ours.scale_absmax, state.state2.absmax)
    absmax = w.reshape(-1, 64).abs().amax(1)
    centred = absmax - absmax.mean()
    # bitsandbytes' generic kernel (exact nearest value, ties to the lower one) gives our codes exactly...
    generic, _ = torch.ops.bitsandbytes.quantize_blockwise.default(centred.double(), DYNAMIC_CODE.double(), 256)
    assert torch.equal(ours.scale_codes, generic)
    # ...its compiled CPU kernel (what quantize_4bit ran) picks the other neighbour on a few near-ties
    a, b = ours.scale_codes.long(), state.absmax.long()
    scaled = scaled_values(centred, 256)
    step = (DYNAMIC_CODE[a] - DYNAMIC_CODE[b]).abs()
    ties = near_tie(scaled, DYNAMIC_CODE, a, b, 0.05 * step)
    differ = a != b
    assert bool((ties | ~differ).all()) and differ.float().mean() <= 0.01
    # the dequantized weights then differ at most by the difference of the two block scales (|code| <= 1)
    ref_absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
    gap = (block_absmax(ours) - ref_absmax).abs()  # (n_blocks,)
    diff = (dequantize_nf4(ours) - bnb.dequantize_4bit(theirs, state)).reshape(-1, 64).abs().amax(1)
    assert bool((diff <= gap + 1e-7).all()) and bool((diff[~differ] <= 1e-7).all())
    nonzero = absmax > 0
    assert ((block_absmax(ours) - absmax).abs() / absmax)[nonzero].max() < 0.02  # 8 bits: 1.5% at worst
    assert (dequantize_nf4(ours)[3, :64] == 0).all()  # an all-zero block stays exactly 0 (code 7 is 0)


def test_nf4_equals_torchao():
    nf4 = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    w = weight(128, 256)
    theirs = nf4.to_nf4(w, block_size=64, scaler_block_size=256)
    ours = quantize_nf4(w)
    a = unpack_4bit(ours.packed, w.numel()).long()
    b = unpack_4bit(theirs.quantized_data, w.numel()).long()
    # torchao's table has 4 decimals, so values within 5e-5 of a midpoint may round to the other neighbour; and it
    # divides an all-zero block by its absmax 0, so that block (row 3's first 64 values) gets NaN codes: left out
    differ = a != b
    differ[3 * 256:3 * 256 + 64] = False
    assert bool((near_tie(scaled_values(w), NF4_CODE, a, b, 1e-4) | ~differ).all()) and differ.float().mean() <= 0.01
    # the same codes times torchao's own (int8-quantized) scales give torchao's weight, up to its table's rounding
    scales = theirs.dequantize_scalers(theirs.quantized_scalers, theirs.quantization_factor, 256)  # (n_blocks,)
    rebuilt = (NF4_CODE[b].view(-1, 64) * scales[:, None]).view(w.shape)
    assert (rebuilt - theirs.get_original_weight()).abs().max() <= 1e-4 * scales.max()
    same = ~differ.view(w.shape)
    same[3, :64] = False
    assert (dequantize_nf4(ours) - theirs.get_original_weight())[same].abs().max() < 0.01 * w.abs().max()


def test_nf4_with_double_quant_stores_4127_bits_per_weight():
    layer = NF4Linear(weight(768, 768))
    # 4 bits of code + an 8-bit scale per 64 weights + an fp32 scale per 64 * 256 weights (+ one fp32 mean)
    expected = 4 + 8 / 64 + 32 / (64 * 256) + 32 / 768 ** 2
    assert layer.weight_nbytes() * 8 / layer.quantized_numel == pytest.approx(expected, rel=1e-9)
    assert abs(expected - 4.127) < 1e-3
    assert NF4Linear(weight(768, 768), double_quant=False).weight_nbytes() * 8 / 768 ** 2 == 4.5


def test_int8_codes_equal_bitsandbytes_and_round_trip():
    w = weight()
    q, scale = quantize_int8(w)
    theirs, row_stats, _ = torch.ops.bitsandbytes.int8_vectorwise_quant.default(w)
    assert torch.allclose(scale * 127, row_stats)
    differ = q != theirs  # bitsandbytes multiplies by 127 / absmax, we divide by absmax / 127: ties may round apart
    frac = (w / scale[:, None]).abs() % 1
    assert bool(((frac - 0.5).abs() < 1e-4)[differ].all())
    assert ((dequantize_int8(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-9).all()
    qb, sb = quantize_int8_blockwise(w, 64)
    assert qb.shape == (w.numel() // 64, 64) and sb.shape == (w.numel() // 64,)
    err = (dequantize_int8_blockwise(qb, sb, w.shape) - w).abs()
    assert (err.view(-1, 64) <= sb[:, None] / 2 + 1e-9).all()
    assert err.max() < (dequantize_int8(q, scale) - w).abs().max()  # the outlier row hurts only its own block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_matmul_equals_dequantize_then_matmul(dtype):
    w, bias = weight(96, 64), torch.randn(96) * 0.1
    q, scale = quantize_int8(w)
    x = torch.randn(3, 5, 64).to(dtype)
    ref = torch.nn.functional.linear(x.double(), dequantize_int8(q, scale, torch.float64), bias.double())
    fast = int8_linear(x, q, scale, bias, kernel="int8pack")
    slow = int8_linear(x, q, scale, bias, kernel="dequantize")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert fast.dtype == dtype and (fast.double() - ref).abs().max() < tol * ref.abs().max()
    assert (slow.double() - ref).abs().max() < tol * ref.abs().max()
    layer = Int8Linear(w, bias, kernel="int8pack")
    assert torch.equal(layer(x), fast)
    if dtype == torch.float32:  # fbgemm rounds the activations to int8 too: within that rounding of the reference
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates the quantized tensor type fbgemm's packing uses
            w8a8 = Int8Linear(w, bias, kernel="fbgemm")(x)
        step = x.abs().max() / 127  # at most what 7-bit rounding over [min, max] moves an activation: (max - min) / 254
        assert (w8a8 - ref).abs().max() <= step * dequantize_int8(q, scale).abs().sum(1).max()


def test_int8_auto_kernel_int8pack_in_bf16_for_few_rows_else_the_dequantized_weight():
    w, bias = weight(96, 64), torch.randn(96) * 0.1
    q, scale = quantize_int8(w)
    few, many = torch.randn(2, 3, 64), torch.randn(Int8Linear.AUTO_ROWS + 1, 64)  # 6 rows: decoding-sized
    layer = Int8Linear(w, bias)  # kernel="auto"
    for x in (few, many):  # fp32 stays fp32: the dequantized weight, never int8pack's slow fp32 path
        assert torch.equal(layer(x), int8_linear(x, q, scale, bias, kernel="dequantize"))
    assert torch.equal(layer(few.bfloat16()), int8_linear(few.bfloat16(), q, scale, bias, kernel="int8pack"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(few), int8_linear(few.bfloat16(), q, scale, bias, kernel="int8pack"))
        assert torch.equal(layer(many), int8_linear(many.bfloat16(), q, scale, bias, kernel="dequantize"))
    fast = Int8Linear(w, bias, activation_dtype=torch.bfloat16)
    assert fast(few).dtype == torch.float32
    assert torch.equal(fast(few), int8_linear(few.bfloat16(), q, scale, bias, kernel="int8pack").float())
    x = few.bfloat16().requires_grad_(True)  # a gradient needed: the dequantized weight
    fast(x).float().sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("cls", [NF4Linear, Int8Linear])
def test_quantized_layer_gradcheck_and_no_weight_gradient(cls):
    layer = cls(weight(24, 64), torch.randn(24) * 0.1)
    x = torch.randn(2, 3, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))  # float64 all through: the weight is dequantized to x's dtype
    assert not any(p.requires_grad for p in layer.parameters())
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x).sum().backward()
    assert saved == []  # nothing kept for backward: not the dequantized weight, not even x
    assert layer.bias.grad is None and all(b.grad is None for b in layer.buffers())
    assert torch.allclose(x.grad, layer.dequantize(torch.float64).sum(0).expand_as(x))


def test_quantized_layer_keeps_only_the_packed_weight():
    layer = NF4Linear(weight(64, 128), torch.zeros(64))
    assert {n for n, _ in layer.named_buffers()} == {"packed", "scale_codes", "scale_absmax", "scale_offset"}
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 64 * 128 // 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 128)).dtype == torch.bfloat16  # dequantized to autocast's compute dtype


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    folders = {}
    for kind in ("gpt2", "bert"):
        folders[kind] = tmp_path_factory.mktemp(kind)
        if kind == "gpt2":
            cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                          bos_token_id=0, eos_token_id=0)
            transformers.GPT2LMHeadModel(cfg).save_pretrained(folders[kind])
        else:
            cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, max_position_embeddings=32)
            transformers.BertModel(cfg).save_pretrained(folders[kind])
    return folders


IDS = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_load_quantized_equals_quantizing_the_loaded_model(kind, quant, tiny):
    cls = GPT2 if kind == "gpt2" else BERT
    full = cls.from_pretrained(tiny[kind]).eval()
    # GPT-2 returns (logits, loss), BERT its hidden states
    out = (lambda y: y[0]) if kind == "gpt2" else (lambda y: y)
    with torch.no_grad():
        ref = out(full(IDS))
        ptq = out(quantize_model(cls.from_pretrained(tiny[kind]), quant).eval()(IDS))
        streamed_model = load_quantized(cls, tiny[kind], quant)
        streamed = out(streamed_model(IDS))
    assert torch.equal(streamed, ptq)
    assert 0 < (streamed - ref).abs().max() < 0.1 * ref.abs().max()
    n_linear = 4 * 2  # four linear layers in each of the 2 blocks
    assert sum(isinstance(m, (NF4Linear, Int8Linear)) for m in streamed_model.modules()) == n_linear
    assert not any(isinstance(m, torch.nn.Linear) and m.weight.numel() > 97 * 64 for m in streamed_model.modules())
    if kind == "gpt2":
        assert streamed_model.lm_head.weight is streamed_model.transformer.wte.weight
    sizes = model_nbytes(streamed_model)
    assert sizes["quantized_params"] == sum(m.weight.numel() for n, m in full.named_modules()
                                            if isinstance(m, torch.nn.Linear) and n != "lm_head" and "pooler" not in n)


def test_int8_generation_with_the_head_quantized(tiny):
    model = GPT2.from_pretrained(tiny["gpt2"]).eval()
    int8 = quantize_model(GPT2.from_pretrained(tiny["gpt2"]), "int8", head=True,
                          activation_dtype=torch.bfloat16).eval()
    assert isinstance(int8.lm_head, Int8Linear)
    assert int8.transformer.wte.weight.dtype == torch.float32  # the embedding lookup stays full precision
    with torch.no_grad():
        (a, _), (b, _) = model(IDS), int8(IDS)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    out = int8.generate(IDS[:1, :4], max_new_tokens=8, temperature=0.0)
    assert out.shape == (1, 12)


def test_qlora_trains_only_the_adapters(tiny):
    model = add_lora(load_quantized(GPT2, tiny["gpt2"], "nf4"), r=4, alpha=8, targets="all").train()
    packed = {n: b.clone() for n, b in model.named_buffers()}
    assert all(isinstance(m.base, NF4Linear) for m in model.modules() if isinstance(m, LoRALinear))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(IDS, targets=IDS)[1]
        loss.backward()
        opt.step(), opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                            if "lora_" in n}
    assert all(torch.equal(b, packed[n]) for n, b in model.named_buffers())


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_qat_straight_through_then_convert(quant, tiny):
    model = prepare_qat(GPT2.from_pretrained(tiny["gpt2"]), quant).train()
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, QATLinear)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    fq = layer.weight.detach().clone()
    with torch.no_grad():
        from nanoft.quant.qat import round_trip
        fq = round_trip(fq, quant)
    assert not torch.equal(fq, layer.weight)  # the forward does round
    xr = x.detach().clone().requires_grad_()
    wr = fq.clone().requires_grad_()
    torch.nn.functional.linear(xr, wr, layer.bias.detach()).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, wr.grad) and torch.allclose(x.grad, xr.grad)  # identity through rounding
    model.eval()
    with torch.no_grad():
        before, _ = model(IDS)
        after, _ = convert_qat(model)(IDS)
    assert not any(isinstance(m, QATLinear) for m in model.modules())
    assert (after - before).abs().max() < 1e-4  # the converted layers hold exactly what QAT computed with
