"""Which Hugging Face module each nanoft module is, for GPT-2 and BERT: the names PEFT adapters and quantized
checkpoint loading need.

PEFT names an adapter tensor after the transformers module it sits on (`transformer.h.0.attn.c_attn.lora_A.weight`),
and a checkpoint names each weight the same way. nanoft's GPT-2 uses transformers' module names already; nanoft's
BERT uses short names and one fused `qkv` layer where transformers has three (query, key, value). So the map is
nanoft module path -> the HF module paths it holds, in the order its output rows stack them:

    "transformer.h.0.attn.c_attn" -> ("transformer.h.0.attn.c_attn",)                    GPT-2: the same name
    "layers.0.attn.qkv"           -> ("encoder.layer.0.attention.self.query",
                                      "encoder.layer.0.attention.self.key",
                                      "encoder.layer.0.attention.self.value")            BERT: one layer, three

Paths are relative to the GPT2 or BERT module itself (GPT2LMHeadModel's names, BertModel's names); `backbone()` finds
that module inside a bigger one (a BertForMaskedLM, a model with task heads).
"""
from nanoft.models.bert import BERT
from nanoft.models.gpt2 import GPT2

# GPT-2's c_attn, c_proj and c_fc are transformers "Conv1D" layers: a port of the original TensorFlow code, which
# stores the weight (in, out) and computes x @ W. nn.Linear stores (out, in), so these weights are transposed
# between the two (the LoRA matrices are not: PEFT gives Conv1D the same A (r, in) and B (out, r) as nn.Linear).
GPT2_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

# the linear layers inside each transformer block, by family: what LoRA adapts and what quantization compresses
BLOCK_LINEARS = {
    "gpt2": {"attention": ("attn.c_attn",), "mlp": ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
    "bert": {"attention": ("attn.qkv",), "mlp": ("attn.proj", "mlp.fc", "mlp.proj")},
}


def family(model):
    if isinstance(model, GPT2):
        return "gpt2"
    if isinstance(model, BERT):
        return "bert"
    raise TypeError(f"{type(model).__name__} is neither nanoft's GPT2 nor its BERT: pass one of them, or a model "
                    "that holds exactly one of them (see backbone())")


def backbone(model):
    """(path, module) of the one GPT2 or BERT inside model ("" when model is one)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, (GPT2, BERT))]
    if len(found) != 1:
        raise TypeError(f"{type(model).__name__} holds {len(found)} GPT2/BERT modules, not one: pass the one to adapt")
    return found[0]


def bert_modules(n_layer):
    """nanoft module path -> HF BertModel module paths, for every BERT module that holds parameters."""
    names = {"embeddings.word": ("embeddings.word_embeddings",),
             "embeddings.position": ("embeddings.position_embeddings",),
             "embeddings.token_type": ("embeddings.token_type_embeddings",),
             "embeddings.ln": ("embeddings.LayerNorm",),
             "pooler.dense": ("pooler.dense",)}
    for i in range(n_layer):
        hf = f"encoder.layer.{i}."
        names[f"layers.{i}.attn.qkv"] = tuple(hf + "attention.self." + p for p in ("query", "key", "value"))
        names[f"layers.{i}.attn.proj"] = (hf + "attention.output.dense",)
        names[f"layers.{i}.ln_1"] = (hf + "attention.output.LayerNorm",)  # post-LN after attention + residual
        names[f"layers.{i}.mlp.fc"] = (hf + "intermediate.dense",)
        names[f"layers.{i}.mlp.proj"] = (hf + "output.dense",)
        names[f"layers.{i}.ln_2"] = (hf + "output.LayerNorm",)
    return names


def gpt2_modules(n_layer):
    """nanoft module path -> HF GPT2LMHeadModel module paths: the same names. lm_head is left out: it is the token
    embedding (tied), and transformers does not save it either."""
    names = ["transformer.wte", "transformer.wpe", "transformer.ln_f"]
    for i in range(n_layer):
        names += [f"transformer.h.{i}.{m}"
                  for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    return {name: (name,) for name in names}


def hf_modules(model):
    """nanoft module path -> tuple of HF module paths, for a GPT2 or BERT (paths relative to it)."""
    if family(model) == "gpt2":
        return gpt2_modules(model.config.n_layer)
    return bert_modules(model.config.num_hidden_layers)


def block_linears(model, which="all"):
    """Paths of the linear layers inside the transformer blocks of a GPT2 or BERT, in model order.
    which: "attention" (the fused q/k/v projection: LoRA's original choice), "mlp" (the rest), "all", or a list of
    module paths, returned as given."""
    if not isinstance(which, str):
        return list(which)
    groups = BLOCK_LINEARS[family(model)]
    if which not in ("attention", "mlp", "all"):
        raise ValueError(f"which={which!r}: use 'attention', 'mlp' or 'all'")
    suffixes = groups["attention"] + groups["mlp"] if which == "all" else groups[which]
    blocks = "transformer.h" if family(model) == "gpt2" else "layers"
    # "transformer.h.3.attn.c_attn" -> "attn.c_attn" (GPT-2), "layers.3.attn.qkv" -> "attn.qkv" (BERT)
    depth = blocks.count(".") + 2
    return [name for name, _ in model.named_modules()
            if name.startswith(blocks + ".") and name.split(".", depth)[-1] in suffixes]


def replace_module(root, name, module):
    """Put module at the dotted path name inside root ("layers.3.attn.qkv"), in place of what was there."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def is_transposed(model, name):
    """Whether HF stores this module's weight (in, out): GPT-2's Conv1D layers."""
    return family(model) == "gpt2" and name.endswith(GPT2_CONV1D) and name.startswith("transformer.h.")
