"""Hugging Face checkpoints <-> nanoft models, for GPT-2 and BERT.

A Hugging Face model folder (local, or a repo on the hub) holds:
    config.json          the hyper-parameters; "model_type" says which architecture ("gpt2", "bert", ...)
    model.safetensors    name -> tensor, with Hugging Face's module names (or, in older repos, pytorch_model.bin;
                         big models split either one into shards listed by an *.index.json)
Loading = read config.json into our dataclass, read the tensors, rename/reshape them to nanoft's names, check that
every name and shape fits, load_state_dict. Saving runs the same mapping backwards, so transformers can load what
nanoft saves (and the other way round).
"""
import dataclasses
import json
import re
from pathlib import Path

import torch

from nanoft.bert import BERT, BertConfig, BertForMaskedLM
from nanoft.gpt2 import GPT2, GPT2Config
from nanoft.hub import resolve
from nanoft.weights import atomic_write, load_state_dict_from_folder, save_safetensors

LOADERS = {"gpt2": "nanoft.GPT2.from_pretrained (load_gpt2)",
           "bert": "nanoft.BERT.from_pretrained (load_bert) or BertForMaskedLM.from_pretrained (load_bert_mlm)"}


# ---------------------------------------------------------------------------------------------------------------------
# GPT-2. nanoft uses Hugging Face's GPT2LMHeadModel names, so only two things change:
# - the original "gpt2" repo was saved from GPT2Model and has no "transformer." prefix (h.0.attn..., wte.weight);
# - c_attn, c_proj and c_fc are HF "Conv1D" layers, a port of the original TensorFlow code where they were 1x1
#   convolutions computing x @ W with W stored (in, out). nn.Linear computes x @ W.T with W stored (out, in), so
#   these weights are transposed on the way in and out.

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask constants older versions saved


def gpt2_from_hf(sd):
    out, lm_head = {}, None
    for name, t in sd.items():
        name = name.removeprefix("transformer.")
        if GPT2_BUFFERS.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = t
            continue
        out["transformer." + name] = t.t() if name.endswith(CONV1D) else t
    wte = out.get("transformer.wte.weight")
    if lm_head is not None and wte is not None and lm_head.shape == wte.shape and not torch.equal(lm_head, wte):
        raise ValueError("this GPT-2 checkpoint has an lm_head.weight that differs from transformer.wte.weight: "
                         "nanoft's GPT2 always ties them, so load it with transformers instead")
    if wte is not None:
        out["lm_head.weight"] = wte  # tied: the head is the token embedding
    return out


def gpt2_to_hf(sd):
    # lm_head.weight is left out, as transformers does: it is the same tensor as wte and the loader re-ties it
    return {name: (t.t() if name.endswith(CONV1D) else t).contiguous()
            for name, t in sd.items() if name != "lm_head.weight"}


# ---------------------------------------------------------------------------------------------------------------------
# BERT. Hugging Face keeps the module names of Google's original TensorFlow BERT; nanoft uses short ones and one
# fused qkv Linear (rows: query, key, value) instead of three. Each entry maps a module; .weight/.bias follow.

def bert_names(n_layer):
    """HF module name -> nanoft module name, for an encoder with n_layer layers (no "bert." prefix)."""
    names = {"embeddings.word_embeddings": "embeddings.word",
             "embeddings.position_embeddings": "embeddings.position",
             "embeddings.token_type_embeddings": "embeddings.token_type",
             "embeddings.LayerNorm": "embeddings.ln",
             "pooler.dense": "pooler.dense"}
    for i in range(n_layer):
        hf = f"encoder.layer.{i}."
        names[hf + "attention.output.dense"] = f"layers.{i}.attn.proj"
        names[hf + "attention.output.LayerNorm"] = f"layers.{i}.ln_1"  # post-LN after attention + residual
        names[hf + "intermediate.dense"] = f"layers.{i}.mlp.fc"
        names[hf + "output.dense"] = f"layers.{i}.mlp.proj"
        names[hf + "output.LayerNorm"] = f"layers.{i}.ln_2"
    return names


MLM_NAMES = {"cls.predictions.transform.dense": "mlm_head.transform.dense",
             "cls.predictions.transform.LayerNorm": "mlm_head.transform.ln"}
# heads of other tasks, and the position-id constant: not part of the encoder
BERT_IGNORED = re.compile(r"(cls|classifier|qa_outputs)\..*|embeddings\.position_ids")


def bert_from_hf(sd, n_layer):
    """HF BERT tensors (any head, with or without "bert." prefix) -> (encoder tensors with nanoft names, the rest
    with HF names). The rest holds the heads (cls.*) and whatever did not map (reported as unexpected)."""
    names = bert_names(n_layer)
    enc, rest, qkv = {}, {}, {}
    for name, t in sd.items():
        # Google's TF checkpoints called LayerNorm's scale and shift gamma and beta; old .bin files kept that
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        name = name.removeprefix("bert.")
        module, _, param = name.rpartition(".")
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)", module)
        if m and int(m[1]) < n_layer:
            qkv[(int(m[1]), param, m[2])] = t
        elif module in names:
            enc[f"{names[module]}.{param}"] = t
        elif name != "embeddings.position_ids":
            rest[name] = t
    for i, param in sorted({(i, param) for i, param, _ in qkv}):
        parts = [qkv.get((i, param, p)) for p in ("query", "key", "value")]
        if all(p is not None for p in parts):
            enc[f"layers.{i}.attn.qkv.{param}"] = torch.cat(parts, dim=0)  # (3H, H) or (3H,)
        else:  # half a qkv: report the pieces as unexpected rather than guess
            rest.update({f"encoder.layer.{i}.attention.self.{p}.{param}": qkv[(i, param, p)]
                         for p in ("query", "key", "value") if (i, param, p) in qkv})
    return enc, rest


def bert_to_hf(sd, n_layer):
    """nanoft BERT tensors -> HF BertModel names (no prefix)."""
    to_hf = {nano: hf for hf, nano in bert_names(n_layer).items()}
    out = {}
    for name, t in sd.items():
        module, _, param = name.rpartition(".")
        m = re.fullmatch(r"layers\.(\d+)\.attn\.qkv", module)
        if m:
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                out[f"encoder.layer.{m[1]}.attention.self.{part}.{param}"] = chunk.contiguous()
        else:
            out[f"{to_hf[module]}.{param}"] = t
    return out


def mlm_head_from_hf(rest, word_embeddings):
    """The cls.predictions.* tensors -> mlm_head.* names, or {} when the checkpoint has no MLM head."""
    head = {}
    for name, t in rest.items():
        module, _, param = name.rpartition(".")
        if module in MLM_NAMES:
            head[f"{MLM_NAMES[module]}.{param}"] = t
    # the output bias is stored twice (cls.predictions.bias and the tied cls.predictions.decoder.bias)
    bias = rest.get("cls.predictions.bias", rest.get("cls.predictions.decoder.bias"))
    if bias is not None:
        head["mlm_head.bias"] = bias
    decoder = rest.get("cls.predictions.decoder.weight")  # tied to the word embeddings when present
    if (decoder is not None and word_embeddings is not None and decoder.shape == word_embeddings.shape
            and not torch.equal(decoder, word_embeddings)):
        raise ValueError("this BERT checkpoint's cls.predictions.decoder.weight differs from its word embeddings: "
                         "nanoft's BertForMaskedLM always ties them, so load it with transformers instead")
    return head


# ---------------------------------------------------------------------------------------------------------------------
# Loading

def read_config(name_or_path, expected, **hub_kwargs):
    path = resolve(name_or_path, "config.json", **hub_kwargs)
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-download it or fix the file") from None
    found = config.get("model_type", expected)  # very old configs have no model_type: trust the caller
    if found != expected:
        fix = (f"load it with {LOADERS[found]}" if found in LOADERS else
               f"nanoft loads only {' and '.join(LOADERS)} checkpoints")
        raise ValueError(f"{name_or_path} is a {found!r} checkpoint (config.json model_type), not {expected!r}: {fix}")
    return config


def config_from_dict(cls, config):
    # keep only the fields our dataclass knows: HF configs carry many more (use_cache, summary_*, id2label, ...)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in known})


def check_unsupported(config, **defaults):
    # HF options that change the maths of the model: refuse rather than load something that silently differs
    for key, ok in defaults.items():
        if key in config and config[key] != ok:
            raise ValueError(f"config.json sets {key}={config[key]!r}, which nanoft does not implement (only "
                             f"{ok!r}): load this checkpoint with transformers instead")


def load_into(model, sd, source, strict=True, fresh=()):
    """Copy `sd` (nanoft names) into `model`, after checking names and shapes. Names starting with a prefix in
    `fresh` may be missing: they keep their initialisation. One error lists every problem at once."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.startswith(tuple(fresh))]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} in checkpoint vs {tuple(v.shape)} in model"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if wrong or (strict and (missing or unexpected)):
        problems = [f"{label}: {_some(names)}" for label, names in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        raise ValueError(f"checkpoint {source} does not fit {type(model).__name__}: {'; '.join(problems)}; check that "
                         "config.json matches the weights and that this is the right model class (strict=False "
                         "skips missing and unexpected names, never wrong shapes)")
    # copy_ casts, so an fp16/bf16 checkpoint lands in the model's own dtype (fp32 unless you convert it)
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    return model.eval()  # like transformers: dropout off until the training loop calls model.train()


def _some(names, n=5):
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def read_weights(name_or_path, **hub_kwargs):
    return load_state_dict_from_folder(
        name_or_path, fetch=lambda filename: resolve(name_or_path, filename, required=False, **hub_kwargs))


def load_gpt2(name_or_path, *, strict=True, **hub_kwargs) -> GPT2:
    """A GPT2 from a Hugging Face GPT-2 checkpoint: a local folder or a hub id such as "gpt2".
    hub_kwargs (revision, cache_dir, offline) go to nanoft.hub.resolve."""
    config = read_config(name_or_path, "gpt2", **hub_kwargs)
    check_unsupported(config, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                      add_cross_attention=False)
    model = GPT2(config_from_dict(GPT2Config, config))
    return load_into(model, gpt2_from_hf(read_weights(name_or_path, **hub_kwargs)), name_or_path, strict)


def _load_bert_tensors(name_or_path, **hub_kwargs):
    config = read_config(name_or_path, "bert", **hub_kwargs)
    check_unsupported(config, position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
    config = config_from_dict(BertConfig, config)
    enc, rest = bert_from_hf(read_weights(name_or_path, **hub_kwargs), config.num_hidden_layers)
    return config, enc, rest


def load_bert(name_or_path, *, strict=True, **hub_kwargs) -> BERT:
    """The BERT encoder of any Hugging Face BERT checkpoint (BertModel, BertForMaskedLM, BertForPreTraining,
    BertForSequenceClassification...): task heads are ignored."""
    config, enc, rest = _load_bert_tensors(name_or_path, **hub_kwargs)
    unexpected = {k: v for k, v in rest.items() if not BERT_IGNORED.fullmatch(k)}
    model = load_into(BERT(config), {**enc, **unexpected}, name_or_path, strict, fresh=("pooler.",))
    if "pooler.dense.weight" not in enc:
        # BertForMaskedLM checkpoints have no pooler (transformers builds that model without one)
        print(f"nanoft: {name_or_path} has no pooler (pooler.dense): it starts freshly initialised; fine-tune it "
              "with a head that uses it (ClassificationHead pooling='cls')")
    return model


def load_bert_mlm(name_or_path, *, strict=True, **hub_kwargs) -> BertForMaskedLM:
    """BertForMaskedLM: encoder + masked-LM head (cls.predictions.*). A checkpoint without an MLM head (e.g. a
    sentence-embedding model) gets a freshly initialised one, with a notice."""
    config, enc, rest = _load_bert_tensors(name_or_path, **hub_kwargs)
    model = BertForMaskedLM(config)
    head = mlm_head_from_hf(rest, enc.get("embeddings.word.weight"))
    fresh = ("bert.pooler.",)  # unused by masked LM, and absent from transformers' BertForMaskedLM
    if not head:
        fresh += ("mlm_head.",)
    unexpected = {k: v for k, v in rest.items()
                  if not BERT_IGNORED.fullmatch(k)}  # the cls.predictions.* ones are already in `head`
    sd = {**{"bert." + k: v for k, v in enc.items()}, **head, **unexpected}
    load_into(model, sd, name_or_path, strict, fresh=fresh)
    if not head:
        print(f"nanoft: {name_or_path} has no masked-LM head (cls.predictions.*): it starts freshly initialised; "
              "train it (MLM) before using its predictions")
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Saving: config.json (model_type + architectures tell transformers which class to build) + model.safetensors

def save_folder(folder, config, model_type, architecture, tensors):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(iter(tensors.values())).dtype
    config = {"model_type": model_type, "architectures": [architecture], **dataclasses.asdict(config),
              "tie_word_embeddings": True, "dtype": str(dtype).removeprefix("torch.")}
    save_safetensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / "config.json", lambda f: f.write(text.encode()))


def _state_dict(model):
    return {k: v.detach() for k, v in model.state_dict().items()}


def save_gpt2(model: GPT2, folder) -> None:
    save_folder(folder, model.config, "gpt2", "GPT2LMHeadModel", gpt2_to_hf(_state_dict(model)))


def save_bert(model: BERT, folder) -> None:
    tensors = bert_to_hf(_state_dict(model), model.config.num_hidden_layers)
    save_folder(folder, model.config, "bert", "BertModel", tensors)


def save_bert_mlm(model: BertForMaskedLM, folder) -> None:
    """Saved as transformers' BertForMaskedLM: "bert." prefix, no pooler (that model has none), the head as
    cls.predictions.* without the decoder weight and bias (tied to the word embeddings and to cls.predictions.bias)."""
    sd, n_layer = _state_dict(model), model.config.num_hidden_layers
    enc = {k.removeprefix("bert."): v for k, v in sd.items() if k.startswith("bert.") and ".pooler." not in k}
    out = {"bert." + k: v for k, v in bert_to_hf(enc, n_layer).items()}
    to_hf = {nano: hf for hf, nano in MLM_NAMES.items()}
    for name, t in sd.items():
        module, _, param = name.rpartition(".")
        if module in to_hf:
            out[f"{to_hf[module]}.{param}"] = t
    out["cls.predictions.bias"] = sd["mlm_head.bias"]
    save_folder(folder, model.config, "bert", "BertForMaskedLM", out)
