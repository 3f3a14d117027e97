"""LoRA: fine-tune a frozen linear layer by learning a low-rank change of its weight (Hu et al., 2021).

A pretrained W (out, in) stays frozen; we learn A (r, in) and B (out, r) with r much smaller than in and out, and
the layer computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        i.e. the weight W + (alpha / r) * B A

- B starts at zero, so the adapted model is exactly the pretrained one at step 0; A starts random (Kaiming-uniform,
  nn.Linear's own init) so that B receives a gradient at once (with both at zero neither would ever move).
- alpha / r: the change B A grows with r at a fixed learning rate; dividing by r means a new rank needs no new
  learning rate, and alpha sets the scale once.
- Only A and B train: r (in + out) numbers instead of in * out, and the optimizer state shrinks by the same factor.
- Merging adds (alpha / r) B A into W once training is done, so inference costs nothing extra; unmerging subtracts it.

nanoft's BERT fuses query, key and value into one `qkv` layer where transformers (and so PEFT) has three. Three
LoRAs on three layers are not one LoRA on the fused layer (that would share one A, with rank r in total), so a
fused layer carries one (A, B) per part, and each part's change lands on its own rows of the output.

Adapters save and load in PEFT's format (adapter_config.json + adapter_model.safetensors, PEFT's tensor names for the
transformers model), so an adapter trained here loads in PEFT and the other way round.
"""
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoft.quant.targets import backbone, block_linears, is_transposed, replace_module
from nanoft.io.weights import load_safetensors, save_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT wraps the transformers model twice (PeftModel -> LoraModel -> the model)


class LoRALinear(nn.Module):
    """A frozen linear layer `base` (nn.Linear, or a quantized one: anything with in_features and out_features)
    plus low-rank updates. parts: how many equal blocks of output rows the base stacks (3 for a fused q/k/v);
    adapted: which of them get an (A, B) (default all)."""

    def __init__(self, base, r=8, alpha=16, dropout=0.0, parts=1, adapted=None):
        super().__init__()
        if r < 1:
            raise ValueError(f"r={r}: the rank must be at least 1")
        if base.out_features % parts:
            raise ValueError(f"out_features={base.out_features} does not split into {parts} equal parts")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.parts, self.part_size = parts, base.out_features // parts
        self.adapted = tuple(range(parts)) if adapted is None else tuple(sorted(adapted))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # the LoRA matrices live beside the base, in its dtype; beside a quantized base, in fp32 (QLoRA's adapters
        # train in full precision while the base stays in 4 bits)
        ref = next(iter([*base.parameters(), *base.buffers()]), None)
        kw = dict(device=None if ref is None else ref.device,
                  dtype=base.weight.dtype if isinstance(base, nn.Linear) else torch.float32)
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(r, self.in_features, **kw)) for _ in self.adapted])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(self.part_size, r, **kw)) for _ in self.adapted])
        for A in self.lora_A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's init, as in the LoRA paper's code and PEFT
        self.merged = False
        self.enabled = True  # False: the base layer alone (lora_disabled: e.g. DPO's reference model)

    def delta_weight(self, k):
        """(alpha / r) B A of the k-th adapted part: (part_size, in)."""
        return self.scale * (self.lora_B[k] @ self.lora_A[k])

    def forward(self, x):
        y = self.base(x)
        if self.merged or not self.enabled:  # merged: the change is inside base.weight already
            return y
        # each part draws its own dropout mask, as PEFT's separate query/key/value adapters do
        deltas = [F.linear(F.linear(self.dropout(x), A), B) * self.scale for A, B in zip(self.lora_A, self.lora_B)]
        if self.parts == 1:
            return y + deltas[0].to(y.dtype)
        chunks = list(y.split(self.part_size, dim=-1))  # parts x (..., part_size)
        for k, i in enumerate(self.adapted):
            chunks[i] = chunks[i] + deltas[k].to(y.dtype)
        return torch.cat(chunks, dim=-1)

    @torch.no_grad()
    def _add_delta(self, sign):
        if not isinstance(self.base, nn.Linear):
            raise TypeError(f"cannot merge into a {type(self.base).__name__}: its weight is quantized; use "
                            "merge_and_unload(model), which dequantizes it into an nn.Linear first")
        for k, i in enumerate(self.adapted):
            rows = slice(i * self.part_size, (i + 1) * self.part_size)
            self.base.weight[rows] += sign * self.delta_weight(k).to(self.base.weight.dtype)

    def merge(self):
        if not self.merged:
            self._add_delta(+1)
            self.merged = True

    def unmerge(self):
        if self.merged:
            self._add_delta(-1)
            self.merged = False

    def merged_linear(self):
        """A plain nn.Linear holding base + change (a quantized base is dequantized first)."""
        with torch.no_grad():
            if isinstance(self.base, nn.Linear):
                weight = self.base.weight.detach().clone()
                bias = self.base.bias
            else:
                weight, bias = self.base.dequantize(), self.base.bias
            if not self.merged:  # (a quantized base is never merged)
                for k, i in enumerate(self.adapted):
                    weight[i * self.part_size:(i + 1) * self.part_size] += self.delta_weight(k).to(weight.dtype)
            out = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                            device=weight.device, dtype=weight.dtype)
            out.weight.copy_(weight)
            if bias is not None:
                out.bias.copy_(bias)
        return out

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}, parts={self.parts}, adapted={self.adapted}, merged={self.merged}"


def add_lora(model, r=8, alpha=16, dropout=0.0, targets="attention"):
    """Put LoRA on the block linears of the GPT2 / BERT / ... inside model (targets.backbone), freeze everything
    else, return model.
    targets: "attention" (the q/k/v projection, the LoRA paper's choice), "all" (every linear layer in the blocks,
    the QLoRA paper's choice), or a list of module paths relative to that backbone. Heads stay frozen too:
    set requires_grad on a task head afterwards to train it alongside."""
    prefix, net = backbone(model)
    names = block_linears(net, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = net.hf_modules()
    for name in names:
        base = net.get_submodule(name)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{prefix + '.' if prefix else ''}{name} has LoRA already")
        replace_module(net, name, LoRALinear(base, r, alpha, dropout, parts=len(modules[name])))
    return model


def lora_layers(model):
    """(path relative to the backbone, LoRALinear) for every adapted layer."""
    _, net = backbone(model)
    return [(name, m) for name, m in net.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    for _, m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    for _, m in lora_layers(model):
        m.unmerge()
    return model


@contextmanager
def lora_disabled(model):
    """Inside the block, model is its base: every LoRALinear computes its frozen layer alone, as PEFT's
    disable_adapter() does. The same weights serve as a second model (DPO's reference) without a copy."""
    layers = [m for _, m in lora_layers(model)]
    if any(m.merged for m in layers):
        raise ValueError("cannot switch off merged LoRA adapters (their change is inside the base weights): "
                         "unmerge_lora(model) first")
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def merge_and_unload(model):
    """Replace every LoRALinear by a plain nn.Linear with the change merged in (PEFT's merge_and_unload)."""
    _, net = backbone(model)
    for name, m in lora_layers(model):
        replace_module(net, name, m.merged_linear())
    return model


# ---------------------------------------------------------------------------------------------------------------------
# PEFT's format

def lora_state_dict(model, hf_prefix=None):
    """PEFT's tensor names -> the LoRA matrices. hf_prefix: where the transformers model keeps the backbone
    (default none: GPT2LMHeadModel's and BertModel's names; "bert." for BertForSequenceClassification), e.g.
    "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" (r, in) and "...lora_B.weight" (out, r)."""
    _, net = backbone(model)
    modules, pre = net.hf_modules(), hf_prefix or ""
    out = {}
    for name, m in lora_layers(model):
        for k, i in enumerate(m.adapted):
            hf = PEFT_PREFIX + pre + modules[name][i]
            out[hf + ".lora_A.weight"] = m.lora_A[k].detach().contiguous()
            out[hf + ".lora_B.weight"] = m.lora_B[k].detach().contiguous()
    return out


def _target_modules(adapted, all_modules):
    """The shortest name suffixes that pick exactly the adapted HF modules, as PEFT matches them (a module is
    targeted when its path equals a key or ends with "." + key): "c_attn" for GPT-2, but "output.dense" for BERT,
    since "dense" alone would pick the pooler too."""
    def picks(key):
        return {m for m in all_modules if m == key or m.endswith("." + key)}
    keys = set()
    for name in adapted:
        parts = name.split(".")
        for n in range(1, len(parts) + 1):
            key = ".".join(parts[-n:])
            if picks(key) <= adapted:
                keys.add(key)
                break
    return sorted(keys)


def save_adapter(model, folder, hf_prefix=None, base_model_name_or_path=None):
    """Write adapter_config.json + adapter_model.safetensors in PEFT's format. hf_prefix: where the transformers
    model PEFT will load this into keeps the encoder ("bert." for BertForSequenceClassification; default: none, i.e.
    GPT2LMHeadModel and BertModel)."""
    _, net = backbone(model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers: call add_lora(model) first")
    r, alpha = layers[0][1].r, layers[0][1].alpha
    if any(m.r != r or m.alpha != alpha for _, m in layers):
        raise ValueError("save_adapter writes one r and alpha for every layer; these layers differ")
    modules, pre = net.hf_modules(), hf_prefix or ""
    all_hf = {pre + h for hs in modules.values() for h in hs}
    adapted = {pre + modules[name][i] for name, m in layers for i in m.adapted}
    dropout = layers[0][1].dropout
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "target_modules": _target_modules(adapted, all_hf),
        # GPT-2's Conv1D stores W (in, out): PEFT transposes when merging
        "fan_in_fan_out": any(is_transposed(net, name) for name, _ in layers),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(lora_state_dict(model, hf_prefix), folder / ADAPTER_WEIGHTS)


def load_adapter(model, folder, hf_prefix=None):
    """Put the adapter saved in folder (by save_adapter or by PEFT's save_pretrained) on model, freezing the rest.
    Layers that already carry LoRA get the saved matrices; the others are wrapped first."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    unsupported = {k: config[k] for k in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save")
                   if config.get(k)}
    if config.get("peft_type") != "LORA" or unsupported:
        raise ValueError(f"{folder} is a {config.get('peft_type')} adapter with {unsupported or 'no extras'}: nanoft "
                         "loads plain LoRA adapters (no DoRA, rsLoRA, per-layer ranks or saved modules)")
    tensors = load_safetensors(folder / ADAPTER_WEIGHTS)
    tensors = {k.replace(".default.", "."): v for k, v in tensors.items()}  # older PEFT kept the adapter's name
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    _, net = backbone(model)
    modules, pre = net.hf_modules(), hf_prefix or ""
    for p in model.parameters():
        p.requires_grad_(False)
    used = set()
    for name, hf_parts in modules.items():
        keys = [PEFT_PREFIX + pre + h + ".lora_A.weight" for h in hf_parts]
        adapted = [i for i, key in enumerate(keys) if key in tensors]
        if not adapted:
            continue
        layer = net.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, r, alpha, dropout, parts=len(hf_parts), adapted=adapted)
            replace_module(net, name, layer)
        if layer.adapted != tuple(adapted):
            raise ValueError(f"{name} adapts parts {layer.adapted}, the adapter parts {tuple(adapted)}")
        with torch.no_grad():
            for k, i in enumerate(adapted):
                a_key = keys[i]
                b_key = a_key.replace(".lora_A.", ".lora_B.")
                layer.lora_A[k].copy_(tensors[a_key])
                layer.lora_B[k].copy_(tensors[b_key])
                used.update((a_key, b_key))
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{len(unused)} adapter tensors fit no layer of this {type(net).__name__} "
                         f"(first: {unused[0]}): "
                         "check hf_prefix (e.g. 'bert.' for an adapter trained on BertForSequenceClassification)")
    return model


def trainable_parameters(model):
    """(trainable, total) parameter counts; a quantized layer's packed weight counts as its out * in values."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(getattr(m, "quantized_numel", 0) for m in model.modules())
    return trainable, total
