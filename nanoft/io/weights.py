"""Read and write weight files: safetensors (our own ~100 lines), pytorch_model.bin (torch.load, tensors only), and
the weights of a model folder (one file, or shards listed by an *.index.json). Tensors by name; no model here.

A .safetensors file is three parts:
    8 bytes      N, the header length, unsigned little-endian
    N bytes      JSON: {"name": {"dtype": "F32", "shape": [768, 2304], "data_offsets": [begin, end]}, ...,
                        "__metadata__": {"format": "pt"}}   (padded with spaces to a multiple of 8)
    the rest     raw little-endian tensor bytes; data_offsets count from the end of the header
There is no pickle anywhere, so loading a file from a stranger cannot run code, and the bytes can be mapped
straight from disk. Big checkpoints are split into shards listed by model.safetensors.index.json.
"""
from __future__ import annotations

import json
import math
import mmap
import pickle
import re
import struct
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from nanoft.io.files import atomic_write

# in the reference implementation's order (its Dtype enum): files are written largest rank first, see save_safetensors
DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "U64": torch.uint64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
DTYPE_RANK = {v: i for i, v in enumerate(DTYPES.values())}

# looked for in this order: safetensors first (no pickle, memory-mapped), then the older pickle-based format
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def _corrupt(path, problem: str) -> ValueError:
    return ValueError(f"{path} is not a valid checkpoint file: {problem}; re-download it (if it came from the hub, "
                      f"delete {path} from the nanoft cache and run again)")


def load_safetensors(path) -> Dict[str, torch.Tensor]:
    """name -> CPU tensor. Tensors are views into a private memory map of the file, so pages are read only when
    touched (and loading a model then copies them once, into its parameters)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"{size} bytes is too short to hold the 8-byte header length (truncated file)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            raise _corrupt(path, f"header says {n} bytes but the file has {size - 8} after the length (truncated "
                                 "file or corrupted header)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(path, f"the JSON header does not parse ({e})") from None
        # ACCESS_COPY: writable copy-on-write pages, so torch gets a writable buffer and the file is never touched
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if not isinstance(header, dict):
        raise _corrupt(path, "the JSON header is not an object")

    start, data_size = 8 + n, size - 8 - n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            valid = all(isinstance(x, int) and x >= 0 for x in [*shape, begin, end])
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise _corrupt(path, f"tensor {name!r} has a bad header entry {str(info)[:200]}")
        if not 0 <= begin <= end <= data_size:
            raise _corrupt(path, f"tensor {name!r} spans bytes {begin}..{end} but the data section has only "
                                 f"{data_size} (truncated file)")
        numel = math.prod(shape)
        if numel * dtype.itemsize != end - begin:
            raise _corrupt(path, f"tensor {name!r} has shape {shape} of {info['dtype']} = {numel * dtype.itemsize} "
                                 f"bytes but spans {end - begin}")
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + begin).reshape(shape)
        # the format does not promise aligned offsets; a misaligned view is legal but slow or unsafe for some ops
        tensors[name] = t if (start + begin) % dtype.itemsize == 0 else t.clone()
    return tensors


def read_safetensors_metadata(path) -> Dict[str, str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


def save_safetensors(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write `tensors` to `path` in safetensors format, atomically. Every tensor is written as its own copy:
    for tied weights, pass only one name (the loader re-ties them)."""
    path = Path(path)
    metadata = {"format": "pt"} if metadata is None else metadata
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str: convert the values with str() or json.dumps()")
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store: convert it first")
    # The reference's order: dtype rank descending (8-byte items, then 4, 2, 1), then name. Big items first keeps
    # every tensor aligned to its item size, and the same order makes our files byte-identical to the reference's.
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_RANK[kv[1].dtype], kv[0]))
    header, offset = {"__metadata__": metadata} if metadata else {}, 0
    for name, t in items:
        nbytes = t.numel() * t.dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # pad so the data section starts 8-byte aligned

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: _write_all(f, blob, items))


def _write_all(f, blob: bytes, items) -> None:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for _, t in items:
        # viewing the bytes as uint8 works for every dtype, bf16 included (numpy has no bf16)
        f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def load_pytorch_bin(path) -> Dict[str, torch.Tensor]:
    """A pytorch_model.bin state dict. weights_only=True: plain tensors and containers only, never arbitrary pickled
    objects, because unpickling a file from the internet can run any code."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError, UnpicklingError... for a bad file
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            found = re.search(r"GLOBAL (\S+)", str(e))
            raise ValueError(f"{path} holds pickled Python objects, not only tensors"
                             f"{f' ({found.group(1)})' if found else ''}; nanoft never unpickles arbitrary objects "
                             "because that can run code: use a safetensors copy of the checkpoint instead") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise _corrupt(path, f"torch.load failed ({type(e).__name__}: {first}): truncated download or not a "
                             "PyTorch checkpoint") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _corrupt(path, "it does not hold a flat dict of name -> tensor (a state_dict)")
    return sd


def load_state_dict_from_folder(folder, fetch: Optional[Callable[[str], Optional[Path]]] = None
                                ) -> Dict[str, torch.Tensor]:
    """The state dict of a Hugging Face model folder: model.safetensors, a sharded model.safetensors.index.json,
    pytorch_model.bin or a sharded pytorch_model.bin.index.json, in that order. `fetch(filename)` returns a local
    path or None; by default it looks in `folder`, and hf_files.py passes one that downloads from the hub."""
    if fetch is None:
        def fetch(name):
            p = Path(folder) / name
            return p if p.is_file() else None
    for name in WEIGHT_FILES:
        path = fetch(name)
        if path is None:
            continue
        load = load_safetensors if ".safetensors" in name else load_pytorch_bin
        if not name.endswith(".index.json"):
            return load(path)
        return _load_sharded(path, fetch, load)
    raise FileNotFoundError(f"no weights in {folder}: looked for {', '.join(WEIGHT_FILES)}; pass a folder in Hugging "
                            "Face format with PyTorch weights (TensorFlow/Flax-only checkpoints are not supported)")


def _load_sharded(index_path: Path, fetch, load) -> Dict[str, torch.Tensor]:
    # the index maps every tensor name to the shard that holds it:
    # {"metadata": {...}, "weight_map": {"wte.weight": "model-00001-of-00002.safetensors", ...}}
    try:
        weight_map = json.loads(Path(index_path).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise _corrupt(index_path, "it is not a shard index with a weight_map") from None
    sd = {}
    for shard in sorted(set(weight_map.values())):
        path = fetch(shard)
        if path is None:
            raise FileNotFoundError(f"shard {shard} listed in {index_path} is missing: download the whole checkpoint "
                                    "folder again")
        sd.update(load(path))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise _corrupt(index_path, f"{len(missing)} tensors listed in the index are in no shard (e.g. {missing[0]})")
    return sd
