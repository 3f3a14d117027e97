"""Quantization-aware training: fine-tune with the weights rounded as they will be, then convert to real int8 / NF4.

Post-training quantization rounds a model that never saw rounding, and its loss rises. QAT keeps full-precision
weights as the parameters but computes every forward with their quantized-then-dequantized copy ("fake
quantization"), so training finds weights that still work once rounded.

Rounding has zero gradient almost everywhere, so backward pretends it is the identity: the straight-through
estimator (Bengio et al., 2013). In code, w + (fq(w) - w).detach(): the forward value is fq(w), and the gradient
reaches w as if fq were not there. absmax scaling clips nothing (the largest value maps to the largest code), so
the identity is right for every weight, with no range outside which the gradient should stop.

convert_qat() then swaps each QATLinear for the real quantized layer. It uses the same quantizer as the fake
quantization, so the converted model computes the function that was trained.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.quant.targets import backbone, block_linears, replace_module
from nanoft.quant.int8 import dequantize_int8, quantize_int8
from nanoft.quant.nf4 import dequantize_nf4, quantize_nf4
from nanoft.quant.quantize import QUANTIZED


def round_trip(w, kind):
    """w quantized and dequantized (no gradient): what the converted layer will hold."""
    if kind == "int8":
        return dequantize_int8(*quantize_int8(w), dtype=w.dtype)
    if kind == "nf4":
        return dequantize_nf4(quantize_nf4(w), dtype=w.dtype)
    raise ValueError(f"kind={kind!r}: use 'int8' or 'nf4'")


def fake_quantize(w, kind):
    """Forward: round_trip(w). Backward: the identity (straight-through estimator)."""
    return w + (round_trip(w.detach(), kind) - w).detach()


class QATLinear(nn.Module):
    """nn.Linear whose forward uses the fake-quantized weight; weight and bias are the trained parameters."""

    def __init__(self, linear, kind):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: the optimizer state carries over
        self.in_features, self.out_features, self.kind = linear.in_features, linear.out_features, kind

    def forward(self, x):
        return F.linear(x, fake_quantize(self.weight, self.kind), self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


def prepare_qat(model, kind="int8", targets="all"):
    """Swap the linear layers of the transformer blocks for QATLinear (in place). Returns model."""
    _, net = backbone(model)
    for name in block_linears(net, targets):
        replace_module(net, name, QATLinear(net.get_submodule(name), kind))
    return model


@torch.no_grad()
def convert_qat(model, **layer_kw):
    """Swap every QATLinear for the real quantized layer of its kind (Int8Linear / NF4Linear). Returns model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QATLinear):
            replace_module(model, name, QUANTIZED[m.kind](m.weight, m.bias, **layer_kw))
    return model
