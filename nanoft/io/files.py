"""Two things every module that writes or downloads a file needs: an atomic write, and a file's sha256.

This is the bottom of the house: it imports only the standard library, so weights.py, hub.py, data.py and
run_files.py can all use it without importing one another.
"""
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

CHUNK = 1 << 20  # 1 MiB reads keep memory flat while hashing multi-GB files


def atomic_write(path, write: Callable, check: Optional[Callable] = None) -> Path:
    """Call write(f) on a temp file beside `path`, then rename it over `path`. A crash (or Ctrl-C) mid-write
    leaves the old file or the new one, never half a file. check(temp_path), when given, runs before the
    rename and may raise to refuse the new file (e.g. a sha256 mismatch): the old file then stays."""
    path = Path(path)
    # the same folder, so os.replace is a rename on one filesystem, which POSIX and Windows make atomic
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
