"""nanoft.io.weights against the reference `safetensors` package and torch.save."""
import json
import os
import struct

import pytest
import safetensors.torch as st
import torch

from nanoft.io import weights
from nanoft.io.weights import (load_pytorch_bin, load_safetensors, load_state_dict_from_folder, read_safetensors_metadata,
                            save_safetensors)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
          torch.float8_e5m2]


def sample(dtype, shape=(3, 5)):
    x = torch.randn(shape) * 50
    if dtype == torch.bool:
        return x > 0
    if not dtype.is_floating_point:
        x = x.abs() if dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64) else x
        return x.to(torch.int64).to(dtype)
    return x.to(dtype)


def bits_equal(a, b):  # compare raw bytes: works for every dtype, NaNs and float8 included
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                    b.reshape(-1).view(torch.uint8))


def mixed():
    """One tensor of every dtype, plus a scalar, an empty tensor and a non-contiguous (transposed) view."""
    t = {f"t.{str(d).removeprefix('torch.')}": sample(d) for d in DTYPES}
    t["scalar"] = torch.tensor(3.5)
    t["empty"] = torch.zeros(0, 4)
    t["transposed"] = torch.randn(4, 6).t()
    return t


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_our_writer_reference_reader(tmp_path, dtype):
    tensors = {"x": sample(dtype), "y": sample(dtype, (7,))}
    save_safetensors(tensors, tmp_path / "a.safetensors")
    back = st.load_file(tmp_path / "a.safetensors")
    assert back.keys() == tensors.keys()
    assert all(bits_equal(back[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_writer_our_reader(tmp_path, dtype):
    tensors = {"x": sample(dtype), "y": sample(dtype, (7,))}
    st.save_file(tensors, tmp_path / "a.safetensors")
    back = load_safetensors(tmp_path / "a.safetensors")
    assert back.keys() == tensors.keys()
    assert all(bits_equal(back[k], tensors[k]) for k in tensors)


def test_mixed_file_is_byte_identical_to_reference(tmp_path):
    tensors = mixed()
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "ref.safetensors",
                 metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    back = load_safetensors(tmp_path / "ref.safetensors")
    assert all(bits_equal(back[k], tensors[k]) for k in tensors)
    assert read_safetensors_metadata(tmp_path / "ours.safetensors") == {"format": "pt"}
    n = struct.unpack("<Q", (tmp_path / "ours.safetensors").read_bytes()[:8])[0]
    assert n % 8 == 0  # header padded so the data starts aligned


def test_loaded_tensors_are_private_copies_of_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors({"w": torch.ones(4)}, path)
    before = path.read_bytes()
    w = load_safetensors(path)["w"]
    w.add_(1)  # copy-on-write map: the file must not change
    assert path.read_bytes() == before
    assert torch.equal(load_safetensors(path)["w"], torch.ones(4))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_safetensors({"w": torch.ones(4)}, path)

    def crash(f, blob, items):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "_write_all", crash)
    with pytest.raises(KeyboardInterrupt):
        save_safetensors({"w": torch.zeros(1000)}, path)
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temp file left behind
    assert torch.equal(load_safetensors(path)["w"], torch.ones(4))  # the old file is intact


def test_save_rejects_unsupported_dtype_and_metadata(tmp_path):
    with pytest.raises(TypeError, match="complex64"):
        save_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"w": torch.ones(1)}, tmp_path / "a.safetensors", metadata={"step": 3})


def _good_file(tmp_path):
    path = tmp_path / "model.safetensors"
    st.save_file({"a": torch.randn(4, 4), "b": torch.randn(8)}, path)
    return path, path.read_bytes()


def _corrupt_cases(data):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])

    def with_header(h):
        blob = json.dumps(h).encode()
        blob += b" " * (-len(blob) % 8)
        return struct.pack("<Q", len(blob)) + blob + data[8 + n:]

    bad_shape = dict(header, a=dict(header["a"], shape=[4, 5]))
    return {
        "too short": (data[:5], "too short"),
        "header beyond file": (struct.pack("<Q", 10 ** 9) + data[8:], "truncated"),
        "bad json": (data[:8] + b"{" * n + data[8 + n:], "JSON"),
        "truncated data": (data[:-10], "truncated"),
        "shape vs bytes": (with_header(bad_shape), "shape"),
        "unknown dtype": (with_header(dict(header, a=dict(header["a"], dtype="Q7"))), "bad header entry"),
    }


@pytest.mark.parametrize("case", ["too short", "header beyond file", "bad json", "truncated data", "shape vs bytes",
                                  "unknown dtype"])
def test_corrupt_safetensors_raise_one_clear_line(tmp_path, case):
    path, data = _good_file(tmp_path)
    content, problem = _corrupt_cases(data)[case]
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_safetensors(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and problem in msg and "re-download" in msg


def test_pytorch_bin_round_trip_and_errors(tmp_path):
    sd = {"w": torch.randn(3, 3), "b": torch.arange(3)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    back = load_pytorch_bin(tmp_path / "pytorch_model.bin")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)

    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated download or not a PyTorch checkpoint") as e:
        load_pytorch_bin(tmp_path / "trunc.bin")
    assert "\n" not in str(e.value) and "re-download" in str(e.value)

    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match="state_dict"):
        load_pytorch_bin(tmp_path / "list.bin")


class _Evil:
    path = None

    def __reduce__(self):  # unpickling this would create a file: weights_only must refuse before that
        return (open, (self.path, "w"))


def test_pytorch_bin_never_unpickles_arbitrary_objects(tmp_path):
    evil = _Evil()
    evil.path = str(tmp_path / "pwned")
    torch.save({"w": torch.ones(1), "x": evil}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="pickled Python objects") as e:
        load_pytorch_bin(tmp_path / "evil.bin")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def _write_sharded(folder, sd, fmt):
    """Split sd into two shards + index, the way transformers lays out big checkpoints."""
    names = sorted(sd)
    shards = {f"model-0000{i + 1}-of-00002.{fmt}": names[i::2] for i in range(2)}
    weight_map = {}
    for shard, keys in shards.items():
        part = {k: sd[k] for k in keys}
        st.save_file(part, folder / shard) if fmt == "safetensors" else torch.save(part, folder / shard)
        weight_map.update({k: shard for k in keys})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["safetensors", "sharded safetensors", "bin", "sharded bin"])
def test_load_state_dict_from_folder(tmp_path, layout):
    sd = {f"layer{i}.weight": torch.randn(3, 2) for i in range(5)}
    if layout == "safetensors":
        st.save_file(sd, tmp_path / "model.safetensors")
    elif layout == "bin":
        torch.save(sd, tmp_path / "pytorch_model.bin")
    else:
        _write_sharded(tmp_path, sd, layout.split()[1])
    back = load_state_dict_from_folder(tmp_path)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_folder_prefers_safetensors(tmp_path):
    st.save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(load_state_dict_from_folder(tmp_path)["w"], torch.ones(2))


def test_folder_without_weights_or_with_missing_shard(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_state_dict_from_folder(tmp_path)
    assert "\n" not in str(e.value)
    assert all(name in str(e.value) for name in weights.WEIGHT_FILES)

    _write_sharded(tmp_path, {"a": torch.ones(1), "b": torch.ones(1)}, "safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_state_dict_from_folder(tmp_path)
