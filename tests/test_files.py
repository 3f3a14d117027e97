"""nanoft.io.files: the one atomic write and the one sha256 that every writer and downloader uses."""
import hashlib
import os

import pytest

from nanoft.io.files import atomic_write, sha256_file


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def dies(f):
        f.write(b"half")
        raise KeyboardInterrupt  # a kill mid-write: the rename never happens
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]  # no temp file left behind

    def refuse(tmp):  # a check that rejects the new bytes (e.g. a sha256 mismatch) keeps the old file
        assert tmp.read_bytes() == b"new" and tmp.parent == tmp_path
        raise ValueError("wrong bytes")
    with pytest.raises(ValueError, match="wrong bytes"):
        atomic_write(path, lambda f: f.write(b"new"), check=refuse)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]

    assert atomic_write(path, lambda f: f.write(b"new"), check=lambda tmp: None) == path
    assert path.read_bytes() == b"new"


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom((1 << 20) + 123)  # more than one read
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
