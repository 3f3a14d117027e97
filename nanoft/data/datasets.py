"""Dataset files: where each one comes from, how it is checked, and how nanoft finds it.

dataset_path(name) looks, in this order:
  1. data_dir (a chapter's --data-dir) or $NANOFT_DATA: a folder laid out like the names in MANIFEST
     (sst2/train.tsv, squad_v1.1/dev-v1.1.json, ...), e.g. ../shared/data; its files are used as they are.
     A folder the user named must hold the file (or the file it is cut from): a missing one is an error, not a
     quiet fall back to the samples, so a mistyped folder never trains on samples;
  2. the download cache, $NANOFT_CACHE/data (default ~/.cache/nanoft/data), checked against MANIFEST's sha256;
  3. the official source, downloaded into the cache (not when offline: HF_HUB_OFFLINE=1 or NANOFT_OFFLINE=1);
     a source that failed once is not asked again in the same process;
  4. a small sample written for nanoft in data/sample/, with a printed notice, so that every chapter still runs.
It returns DataFile(path, is_sample): results computed on a sample must say so.
"""
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

from nanoft.io import hub
from nanoft.io.files import atomic_write, sha256_file

GLUE_SST2 = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SQUAD = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
WIKITEXT2 = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# rasbt/LLMs-from-scratch (Apache-2.0), at the commit whose files ../shared/data's README names
LLMS_FROM_SCRATCH = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/28c65cdfbc3338e2e040016eea4b7fdf556e4d57"
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"

# url: the official file (or zip that holds `member`); sha256: of the file itself (None where no checksum of the
# original is known); derive: (source, first, last article) for files cut from another one; sample: under data/sample.
MANIFEST = {
    "sst2/train.tsv": dict(url=GLUE_SST2, member="SST-2/train.tsv", sample="sst2_sample/train.tsv",
                           sha256="48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
    "sst2/dev.tsv": dict(url=GLUE_SST2, member="SST-2/dev.tsv", sample="sst2_sample/dev.tsv",
                         sha256="54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    "squad_v1.1/train-v1.1.json": dict(url=f"{SQUAD}/train-v1.1.json", sample="squad_sample/train.json",
                                       sha256="3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955"),
    "squad_v1.1/dev-v1.1.json": dict(url=f"{SQUAD}/dev-v1.1.json", sample="squad_sample/eval.json",
                                     sha256="95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"),
    # the official train file is large and often unavailable offline, so chapter 13 can train on the first 38
    # articles of dev and evaluate on the last 10: no paragraph is in both
    "squad_v1.1_devsplit/train.json": dict(derive=("squad_v1.1/dev-v1.1.json", 0, 38), sample="squad_sample/train.json",
                                           sha256="f7959f521e52e2e0ade0687b04e8a6304a55f6232bc63eef6cdff852fe50d96f"),
    "squad_v1.1_devsplit/eval.json": dict(derive=("squad_v1.1/dev-v1.1.json", 38, 48), sample="squad_sample/eval.json",
                                          sha256="facf024f25b8f6949a3040d4f101b7d5e31e54438560ca1af5d962005b8d015e"),
    "wikitext-2/wiki.train.tokens": dict(url=WIKITEXT2, member="wikitext-2/wiki.train.tokens", sha256=None,
                                         sample="lm_sample.txt"),
    "wikitext-2/wiki.valid.tokens": dict(url=WIKITEXT2, member="wikitext-2/wiki.valid.tokens",
                                         sample="lm_sample_valid.txt",
                                         sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    "wikitext-2/wiki.test.tokens": dict(url=WIKITEXT2, member="wikitext-2/wiki.test.tokens",
                                        sample="lm_sample_valid.txt",
                                        sha256="d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    "tiny_shakespeare/input.txt": dict(url=SHAKESPEARE, sample="lm_sample_play.txt",
                                       sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "instruction/instruction-data.json": dict(
        url=f"{LLMS_FROM_SCRATCH}/ch07/01_main-chapter-code/instruction-data.json",
        sample="instruction_sample/instruction-data.json",
        sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"),
    "instruction/instruction-data-with-preference.json": dict(
        url=f"{LLMS_FROM_SCRATCH}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        sample="instruction_sample/instruction-data-with-preference.json",
        sha256="305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"),
}


class DataFile(NamedTuple):
    path: Path
    is_sample: bool  # True: the small sample in data/sample/, not the real dataset

    def __fspath__(self):  # so open(dataset_path(...)) and read_sst2(dataset_path(...)) work directly
        return str(self.path)


def data_cache() -> Path:
    return hub.cache_root() / "data"


def dataset_path(name: str, data_dir=None, download: bool = True) -> DataFile:
    """Local path of dataset file `name` (a key of MANIFEST), found as described at the top of this file."""
    if name not in MANIFEST:
        raise KeyError(f"unknown dataset file {name!r}: use one of {', '.join(MANIFEST)}")
    path = _find(name, data_dir, download)
    if path is not None:
        return DataFile(Path(path), False)
    sample = SAMPLE_DIR / MANIFEST[name]["sample"]
    if not sample.is_file():
        raise FileNotFoundError(f"{name} was not found locally, could not be downloaded, and the bundled sample "
                                f"{sample} is missing: pass --data-dir or set NANOFT_DATA to a folder that has {name}")
    if name not in _announced:  # once per file and process: a chapter may ask for the same file several times
        _announced.add(name)
        print(f"nanoft: using the small sample data/sample/{MANIFEST[name]['sample']} (written for nanoft) because "
              f"{name} was not found locally and could not be downloaded; pass --data-dir or set NANOFT_DATA")
    return DataFile(sample, True)


_announced = set()
_failed_urls = set()  # sources that failed in this process: a second file from the same source does not retry


def _find(name, data_dir, download):
    entry = MANIFEST[name]
    folder, named_by = _named_folder(data_dir, name)
    if folder is not None:
        if (folder / name).is_file():
            return folder / name
        source = entry["derive"][0] if "derive" in entry else None
        if source is None or not (folder / source).is_file():  # with its source there, it is cut into the cache
            wanted = name if source is None else f"{name} (or {source}, which it is cut from)"
            raise FileNotFoundError(f"data folder {folder} (from {named_by}) has no {wanted}: put it at "
                                    f"{folder / name}, or leave {named_by} unset to use the download cache, a "
                                    "download or the bundled sample")
    cached = data_cache() / name
    if cached.is_file() and entry["sha256"] and sha256_file(cached) != entry["sha256"]:
        print(f"nanoft: {cached} does not match its sha256; fetching it again")
        cached.unlink()
    if cached.is_file():
        return cached
    if "derive" in entry:  # built on this machine from its source, which may itself come from data_dir or a download
        source = _find(entry["derive"][0], data_dir, download)
        return None if source is None else _derive_squad_split(source, cached, *entry["derive"][1:], entry["sha256"])
    if not download or hub.is_offline() or entry["url"] in _failed_urls:
        return None
    try:
        if "member" not in entry:
            return hub.download_file(entry["url"], cached, desc=name, sha256=entry["sha256"])
        archive = hub.download_file(entry["url"], data_cache() / "downloads" / entry["url"].rsplit("/", 1)[1])
        return _extract(archive, entry["member"], cached, entry["sha256"])
    except (ConnectionError, FileNotFoundError, PermissionError) as e:  # no network or no file: try the sample
        _failed_urls.add(entry["url"])
        print(f"nanoft: could not download {name}: {e}")
        return None


def _named_folder(data_dir, name):
    """(the data folder the user named, and how they named it), or (None, None) when they named none. name: the file
    wanted, so that a wrong folder is answered with what it should hold."""
    if data_dir:
        local, named_by = data_dir, "--data-dir"
    elif os.environ.get("NANOFT_DATA"):
        local, named_by = os.environ["NANOFT_DATA"], "NANOFT_DATA"
    else:
        return None, None
    folder = Path(local).expanduser()
    fix = (f"give a folder laid out like ../shared/data (this needs {name} in it)" if named_by == "--data-dir" else
           f"NANOFT_DATA is set in your environment: point it to a folder laid out like ../shared/data (this needs "
           f"{name} in it), or unset it")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{named_by} {local} is a file, not a folder: {fix}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{named_by} {local}: no such folder: {fix}")
    return folder, named_by


def check_sha256(path, expected: str, what=None, source=None):
    """Raise when `path` does not hash to `expected`; `source` is the file to delete to fix it (default: path)."""
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"sha256 mismatch for {what or path}: expected {expected}, got {got}: the file is corrupt "
                         f"or changed upstream; delete {source or path} and run again, or pass --data-dir with a "
                         "verified copy")


def _write_verified(dest: Path, write, sha256, what, source):
    """write(file) into dest atomically, refusing it unless it matches sha256: no half or wrong files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    check = (lambda tmp: check_sha256(tmp, sha256, what, source)) if sha256 else None
    return atomic_write(dest, write, check)


def _extract(archive: Path, member: str, dest: Path, sha256):
    try:
        with zipfile.ZipFile(archive) as z:
            if member not in z.namelist():
                raise ValueError(f"{archive} has no {member}: the archive changed upstream; delete it and run again, "
                                 "or pass --data-dir with the file")
            with z.open(member) as src:
                return _write_verified(dest, lambda f: shutil.copyfileobj(src, f), sha256, f"{archive}:{member}",
                                       archive)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive} is not a valid zip file ({e}): delete it and run again") from None


def _derive_squad_split(source: Path, dest: Path, first: int, last: int, sha256):
    with open(source, encoding="utf-8") as f:
        data = json.load(f)
    if len(data.get("data", [])) != 48:
        raise ValueError(f"{source} has {len(data.get('data', []))} articles, SQuAD v1.1 dev has 48: pass the "
                         "official dev-v1.1.json")
    # json.dumps' defaults (ASCII escapes, ", " and ": ") give the published files byte for byte
    text = json.dumps({"version": data["version"], "data": data["data"][first:last]})
    return _write_verified(dest, lambda f: f.write(text.encode("utf-8")), sha256, f"{dest} (cut from {source})",
                           source)


def read_sst2(path) -> list:
    """GLUE SST-2 train.tsv / dev.tsv: a `sentence<TAB>label` header, then one sentence and 0/1 label per line."""
    rows = []
    with _open_text(path, newline="") as f:
        header = f.readline().rstrip("\r\n")
        if header != "sentence\tlabel":
            raise ValueError(f"{path}:1: expected the header 'sentence\\tlabel' of GLUE SST-2, got {header[:60]!r}: "
                             "pass train.tsv or dev.tsv (GLUE's test.tsv has no labels)")
        for lineno, line in enumerate(f, start=2):
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 2 or cols[1] not in ("0", "1") or not cols[0]:
                raise ValueError(f"{path}:{lineno}: expected 'sentence<TAB>label' with label 0 or 1, got "
                                 f"{line.rstrip()[:80]!r}: fix or delete that line (a tab inside the sentence?)")
            rows.append((cols[0], int(cols[1])))
    return rows


def read_text(path) -> str:
    with _open_text(path) as f:
        return f.read()


def _open_text(path, newline=None):
    """path opened as UTF-8 text whose bytes are checked first, so that a latin-1 or binary file is named, with the
    place of its first bad byte and the fix, not answered by a bare UnicodeDecodeError."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): save it "
                         "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or pass the right file") from None
    return open(path, encoding="utf-8", newline=newline)
