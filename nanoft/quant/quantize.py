"""Quantized linear layers, and models built from them: post-training quantization, or a Hugging Face checkpoint
loaded straight into 4 or 8 bits, one layer at a time.

A quantized layer is frozen: it keeps only its packed weight (and a full-precision bias), and its forward
dequantizes the weight to the compute dtype and calls F.linear. Backward hands a gradient to the input only, which
is all QLoRA needs: the LoRA adapters beside the layer train, and the gradient must flow through the frozen layer to
reach the adapters of the layers below.

That backward is written by hand (FrozenQuantizedLinear) for memory's sake. Plain autograd would save the
dequantized weight to compute the input's gradient later: one full-precision copy per layer, alive from forward
to backward, i.e. the whole model in fp32 again, which is what 4 bits were meant to avoid. Instead, backward
dequantizes the weight a second time: some compute for a lot of memory.

Only the linear layers inside the transformer blocks are quantized. Embeddings, norms and heads stay in full
precision, as in QLoRA: they are a small share of the weights of a big model, and a norm's few values or the
output head's logits are where 4 bits would hurt most.
"""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.io import hf_files
from nanoft.quant.targets import backbone, block_linears, is_transposed, replace_module
from nanoft.quant.int8 import dequantize_int8, fbgemm_pack, int8_linear, int8pack_available, quantize_int8
from nanoft.quant.nf4 import BLOCK_SIZE, SCALE_BLOCK_SIZE, NF4Tensor, dequantize_nf4, quantize_nf4


class FrozenQuantizedLinear(torch.autograd.Function):
    """y = x W^T + b with W = layer.dequantize(x.dtype), rebuilt in backward rather than saved."""

    @staticmethod
    def forward(ctx, x, bias, layer):
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_out @ ctx.layer.dequantize(grad_out.dtype) if ctx.needs_input_grad[0] else None  # (..., in)
        grad_bias = grad_out.reshape(-1, grad_out.size(-1)).sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, None  # no gradient for the weight: it is not a parameter


class QuantizedLinear(nn.Module):
    """Shared by the NF4 and int8 layers: shapes, the frozen bias, the forward above."""

    def __init__(self, in_features, out_features, bias):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quantized_numel = in_features * out_features  # parameters held in the packed weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def compute_dtype(self, x):
        # under autocast (bf16 on a CPU or GPU) compute in autocast's dtype, else in the input's
        return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype

    def forward(self, x):
        dtype = self.compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return FrozenQuantizedLinear.apply(x.to(dtype), bias, self)

    def weight_nbytes(self):
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{8 * self.weight_nbytes() / self.quantized_numel:.3f} bits per weight")


class NF4Linear(QuantizedLinear):
    """A frozen linear layer with its weight in NF4 (blocks of 64, scales double-quantized by default)."""

    def __init__(self, weight, bias=None, block_size=BLOCK_SIZE, double_quant=True, scale_block_size=SCALE_BLOCK_SIZE):
        super().__init__(weight.size(1), weight.size(0), bias)
        q = quantize_nf4(weight, block_size, double_quant, scale_block_size)
        self.block_size, self.scale_block_size, self.double_quant = block_size, scale_block_size, double_quant
        for name, t in q.tensors().items():  # buffers: they move with .to() and are saved, but never train
            self.register_buffer(name, t)

    @classmethod
    def from_linear(cls, linear, **kw):
        return cls(linear.weight, linear.bias, **kw)

    def nf4(self):
        fields = {f.name: getattr(self, f.name, None) for f in dataclasses.fields(NF4Tensor)}
        fields["shape"] = torch.Size((self.out_features, self.in_features))
        return NF4Tensor(**fields)

    def dequantize(self, dtype=torch.float32):
        return dequantize_nf4(self.nf4(), dtype)  # (out, in)


class Int8Linear(QuantizedLinear):
    """A frozen linear layer with its weight in int8, one scale per output channel.
    kernel: "int8pack" multiplies by the int8 weight (torch._weight_int8pack_mm) when no gradient is needed
    (inference); "dequantize" always goes through the dequantized weight and F.linear; "fbgemm" (inference on a CPU)
    rounds the activations to int8 too and multiplies int8 by int8 (torch.ops.quantized.linear_dynamic); "auto"
    (the default) picks per call: int8pack when the layer computes in bf16 (autocast, a bf16 input or
    activation_dtype=torch.bfloat16) on a few rows, as in decoding, where the weight's bytes are the cost and int8
    reads a quarter of fp32's; otherwise the dequantized weight, so fp32 stays fp32. On x86 CPUs torch's int8-weight
    kernel is vectorised for bf16 inputs only: on fp32 inputs it is far slower than on bf16 ones, and slower than
    the dequantized weight once there are hundreds of rows (figures: bench/README.md).
    activation_dtype: run the int8pack matmul with the input cast to this dtype (and the output cast back)."""

    AUTO_ROWS = 64  # "auto": at most this many rows go through int8pack (where it stops paying: bench/README.md)

    def __init__(self, weight, bias=None, kernel="auto", activation_dtype=None):
        super().__init__(weight.size(1), weight.size(0), bias)
        q, scale = quantize_int8(weight)
        self.register_buffer("qweight", q)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) float32
        self.kernel, self.activation_dtype = kernel, activation_dtype
        self._fbgemm = None  # fbgemm's own packed copy of the weight, made at the first call that needs it

    @classmethod
    def from_linear(cls, linear, **kw):
        return cls(linear.weight, linear.bias, **kw)

    def dequantize(self, dtype=torch.float32):
        return dequantize_int8(self.qweight, self.scale, dtype)  # (out, in)

    def forward(self, x):
        inference = not (torch.is_grad_enabled() and x.requires_grad)  # a gradient goes through F.linear below
        if self.kernel == "fbgemm" and inference:
            if self._fbgemm is None:
                self._fbgemm = fbgemm_pack(self.qweight, self.scale, self.bias)
            return int8_linear(x, self.qweight, self.scale, kernel="fbgemm", packed=self._fbgemm)
        dtype = self.activation_dtype or self.compute_dtype(x)
        fast = dtype == torch.bfloat16 and int8pack_available(x) and x.numel() <= self.AUTO_ROWS * x.size(-1)
        if inference and (self.kernel == "int8pack" or (self.kernel == "auto" and fast)):
            y = int8_linear(x.to(dtype), self.qweight, self.scale, self.bias, kernel="int8pack")
            return y.to(x.dtype) if self.activation_dtype else y
        return super().forward(x)


QUANTIZED = {"nf4": NF4Linear, "int8": Int8Linear}


def _layer_class(kind):
    if kind not in QUANTIZED:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(QUANTIZED)}")
    return QUANTIZED[kind]


@torch.no_grad()
def quantize_model(model, kind="nf4", targets="all", head=False, **layer_kw):
    """Post-training quantization, in place: the linear layers of the transformer blocks of the GPT2 / BERT / ...
    inside model (targets.backbone) become NF4Linear or Int8Linear (targets: "all", "attention", "mlp" or a list
    of paths). Returns model. head=True (a language model, for inference): its lm_head too. It is a third of GPT-2
    small's weights and decoding reads all of it for every token; the token embedding it is tied to stays in full
    precision (a lookup reads one row)."""
    cls = _layer_class(kind)
    _, net = backbone(model)
    names = block_linears(net, targets)
    if head:
        if not isinstance(getattr(net, "lm_head", None), nn.Linear):
            raise ValueError(f"head=True quantizes a language model's lm_head; this {type(net).__name__} has none")
        names.append("lm_head")
    for name in names:
        replace_module(net, name, cls.from_linear(net.get_submodule(name), **layer_kw))
    return model


def model_nbytes(model):
    """{"quantized": bytes of packed weights and their scales, "full": bytes of every other parameter and buffer,
    "quantized_params": how many weights the packed bytes hold}."""
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    packed = {id(b) for m in quantized for b in m.buffers()}
    seen, full = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in packed and id(t) not in seen:
            seen.add(id(t))
            full += t.numel() * t.element_size()
    return {"quantized": sum(m.weight_nbytes() for m in quantized), "full": full,
            "quantized_params": sum(m.quantized_numel for m in quantized)}


def _find(sd, name):
    # a checkpoint may have been saved from the bare model (the original "gpt2" repo has no "transformer." prefix)
    # or from one with a head ("bert." before every BERT name)
    for candidate in (name, name.removeprefix("transformer."), "bert." + name):
        if candidate in sd:
            return sd[candidate]
    raise KeyError(f"{name} is not in the checkpoint")


def _tied(model):
    """[(alias, source)]: the parameter paths that share a tensor with an earlier one (GPT-2's lm_head.weight is
    transformer.wte.weight)."""
    first, tied = {}, []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    return tied


@torch.no_grad()
def load_quantized(cls, name_or_path, kind="nf4", targets="all", dtype=torch.float32, layer_kw=None, **hub_kwargs):
    """Build a GPT2, BERT, ... (a class that declares its HF names: see targets.py) from a Hugging Face checkpoint
    (a local folder or a hub id) with the linear layers of its blocks quantized as they are read, one layer at a
    time: the full-precision model never exists. The model is built on the meta device (shapes, no memory), and
    every module then gets its tensors from the memory-mapped checkpoint: quantized (targets, to `kind`; layer_kw
    go to the layer) or copied in `dtype` (embeddings, norms, heads). hub_kwargs (revision, cache_dir, offline) go
    to nanoft.io.hub.resolve."""
    layer_cls = _layer_class(kind)
    config = hf_files.read_config(name_or_path, cls.HF_MODEL_TYPE, **hub_kwargs)
    # a class may read its config.json itself (Llama: transformers' old and new rope keys, "qwen2")
    config = cls.config_from_hf(config) if hasattr(cls, "config_from_hf") else hf_files.config_from_dict(cls.CONFIG,
                                                                                                          config)
    with torch.device("meta"):
        model = cls(config)
    tied = _tied(model)
    sd = hf_files.read_tensors(name_or_path, **hub_kwargs)  # safetensors: views into a memory map, read when touched
    quantized = set(block_linears(model, targets))
    for name, hf_names in model.hf_modules().items():
        module = model.get_submodule(name)
        tensors = {}
        for pname, _ in module.named_parameters(recurse=False):
            parts = [_find(sd, f"{hf}.{pname}") for hf in hf_names]
            if pname == "weight" and is_transposed(model, name):
                parts = [p.t() for p in parts]  # Conv1D (in, out) -> nn.Linear (out, in)
            tensors[pname] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]  # fused qkv: rows q, k, v
        if name in quantized:
            replace_module(model, name, layer_cls(tensors["weight"], tensors.get("bias"), **(layer_kw or {})))
        else:
            for pname, t in tensors.items():
                setattr(module, pname, nn.Parameter(t.to(dtype).clone()))
    for alias, source in tied:  # a tied weight is read once, then shared again (the head is the embedding)
        replace_module(model, alias, model.get_parameter(source))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{name_or_path} left {len(left)} tensors unloaded (first: {left[0]})")
    return model.eval()
