"""Which modules quant/ works on, and what Hugging Face calls them: read from the model itself.

LoRA adapts, and quantization compresses, the linear layers inside the transformer blocks. PEFT names an adapter
tensor after the transformers module it sits on (`transformer.h.0.attn.c_attn.lora_A.weight`), and a checkpoint
names each weight the same way. Each model class declares both once, and this file only reads them:

    class GPT2(nn.Module):
        HF_MODEL_TYPE = "gpt2"        # config.json's model_type
        CONFIG = GPT2Config           # the dataclass built from config.json
        BLOCKS = "transformer.h"      # the nn.ModuleList of transformer blocks
        BLOCK_LINEARS = {"attention": ("attn.c_attn",),                          # paths inside one block:
                         "mlp": ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")}       # q/k/v, then every other linear
        HF_TRANSPOSED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # HF stores these (in, out)
        def hf_modules(self): ...     # {nanoft module path: (HF module paths, ...)}

HF_MODEL_TYPE may be a tuple (one class that loads several model types), and a class may read its config.json
itself with a classmethod config_from_hf(dict) (load_quantized uses it when there is one). HF_MODEL_TYPE and
CONFIG are needed by load_quantized only; LoRA, PEFT files, quantize_model and QAT need the other four.

hf_modules() maps every module that holds parameters (a weight tied to another one is left out) to the HF modules
it holds, in the order its output rows stack them:

    "transformer.h.0.attn.c_attn" -> ("transformer.h.0.attn.c_attn",)                    GPT-2: the same name
    "layers.0.attn.qkv"           -> ("encoder.layer.0.attention.self.query",
                                      "encoder.layer.0.attention.self.key",
                                      "encoder.layer.0.attention.self.value")            BERT: one layer, three

Paths are relative to the model module itself (GPT2LMHeadModel's names, BertModel's names). `backbone()` finds that
module inside a bigger one (a BertForMaskedLM, a model with task heads) by what its class declares, so a new model
needs no edit here.
"""


def is_backbone(module):
    return hasattr(type(module), "BLOCK_LINEARS") and hasattr(type(module), "hf_modules")


def backbone(model):
    """(path, module) of the one model inside model that declares its block linears ("" when model is one)."""
    found = [(name, m) for name, m in model.named_modules() if is_backbone(m)]
    if len(found) != 1:
        raise TypeError(f"{type(model).__name__} holds {len(found)} models that declare BLOCK_LINEARS and "
                        "hf_modules (nanoft's GPT2, BERT, ...), not one: pass the one to adapt")
    return found[0]


def block_linears(model, which="all"):
    """Paths of the linear layers inside the transformer blocks of model, in model order.
    which: "attention" (the query/key/value projections: LoRA's original choice), "mlp" (the rest), "all", or a
    list of module paths, returned as given."""
    if not isinstance(which, str):
        return list(which)
    groups = model.BLOCK_LINEARS
    if which not in ("attention", "mlp", "all"):
        raise ValueError(f"which={which!r}: use 'attention', 'mlp' or 'all'")
    suffixes = groups["attention"] + groups["mlp"] if which == "all" else groups[which]
    # "transformer.h.3.attn.c_attn" -> "attn.c_attn" (GPT-2), "layers.3.attn.qkv" -> "attn.qkv" (BERT)
    depth = model.BLOCKS.count(".") + 2
    return [name for name, _ in model.named_modules()
            if name.startswith(model.BLOCKS + ".") and name.split(".", depth)[-1] in suffixes]


def replace_module(root, name, module):
    """Put module at the dotted path name inside root ("layers.3.attn.qkv"), in place of what was there."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def is_transposed(model, name):
    """Whether HF stores this module's weight (in, out) where nanoft's nn.Linear has (out, in): GPT-2's Conv1D."""
    return (bool(model.HF_TRANSPOSED) and name.startswith(model.BLOCKS + ".")
            and name.endswith(model.HF_TRANSPOSED))
