"""Hugging Face model folders, read and written as (config dict, tensors by name). No model class lives here.

A Hugging Face model folder (local, or a repo on the hub) holds:
    config.json          the hyper-parameters; "model_type" says which architecture ("gpt2", "bert", ...)
    model.safetensors    name -> tensor, with Hugging Face's module names (or, in older repos, pytorch_model.bin;
                         big models split either one into shards listed by an *.index.json)
A model's from_pretrained (in gpt2.py, bert.py) reads (config dict, tensors) with read_folder, renames the tensors to
its own names, and copies them in with load_into, which checks that every name and shape fits.
save_pretrained renames them back and calls write_folder, so transformers loads what nanoft saves.
This file sits below the models: it imports hub.py and weights.py, and never a model.
"""
import dataclasses
import json
from pathlib import Path

from nanoft.io.files import atomic_write
from nanoft.io.hub import resolve
from nanoft.io.weights import load_state_dict_from_folder, save_safetensors

# which nanoft class loads each model_type: only to name the fix when a folder holds another architecture
LOADED_BY = {"gpt2": "nanoft.GPT2.from_pretrained",
             "bert": "nanoft.BERT.from_pretrained or BertForMaskedLM.from_pretrained",
             "llama": "nanoft.Llama.from_pretrained", "qwen2": "nanoft.Llama.from_pretrained"}


def read_folder(name_or_path, model_type: str, supported=None, **hub_kwargs):
    """(config dict, tensors by HF name) of a `model_type` checkpoint: a local folder or a hub id.
    supported: {config key: the only value the model implements}; any other value is refused before the weights
    are fetched (a hub download can be gigabytes). hub_kwargs (revision, cache_dir, offline) go to hub.resolve."""
    config = read_config(name_or_path, model_type, **hub_kwargs)
    check_unsupported(config, **(supported or {}))
    return config, read_tensors(name_or_path, **hub_kwargs)


def read_config(name_or_path, model_type, **hub_kwargs) -> dict:
    """config.json of a local folder or hub id, checked to be a `model_type` checkpoint (a string, or a tuple of
    the model types one class loads: Llama reads "llama" and "qwen2"). hub_kwargs (revision, cache_dir, offline) go
    to nanoft.io.hub.resolve."""
    types = (model_type,) if isinstance(model_type, str) else tuple(model_type)
    path = resolve(name_or_path, "config.json", **hub_kwargs)
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-download it or fix the file") from None
    found = config.get("model_type", types[0])  # very old configs have no model_type: trust the caller
    if found not in types:
        fix = (f"load it with {LOADED_BY[found]}" if found in LOADED_BY else
               f"nanoft loads only {', '.join(LOADED_BY)} checkpoints")
        raise ValueError(f"{name_or_path} is a {found!r} checkpoint (config.json model_type), not "
                         f"{' or '.join(map(repr, types))}: {fix}")
    return config


def read_tensors(name_or_path, **hub_kwargs) -> dict:
    """Every tensor of the folder's weights (safetensors first, then .bin; one file or shards), by HF name."""
    return load_state_dict_from_folder(
        name_or_path, fetch=lambda filename: resolve(name_or_path, filename, required=False, **hub_kwargs))


def config_from_dict(cls, config: dict):
    # keep only the fields our dataclass knows: HF configs carry many more (use_cache, summary_*, id2label, ...)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in known})


def check_unsupported(config: dict, **defaults) -> None:
    # HF options that change the maths of the model: refuse rather than load something that silently differs
    for key, ok in defaults.items():
        if key in config and config[key] != ok:
            raise ValueError(f"config.json sets {key}={config[key]!r}, which nanoft does not implement (only "
                             f"{ok!r}): load this checkpoint with transformers instead")


def load_into(model, sd: dict, source, strict=True, fresh=()):
    """Copy `sd` (the model's own names) into `model`, after checking names and shapes. Names starting with a
    prefix in `fresh` may be missing: they keep their initialisation. One error lists every problem at once."""
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


def write_folder(folder, config: dict, tensors: dict) -> None:
    """config.json + model.safetensors. `config` carries model_type and architectures, which tell transformers
    which class to build; the tensors carry HF names. Tied weights are passed once (the loader re-ties them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(iter(tensors.values())).dtype
    config = {"tie_word_embeddings": True, **config, "dtype": str(dtype).removeprefix("torch.")}  # Llama may untie
    save_safetensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / "config.json", lambda f: f.write(text.encode()))
