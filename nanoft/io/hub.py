"""Fetch model files from a local folder or the Hugging Face hub, with nothing but urllib.

A hub file lives at  {endpoint}/{repo_id}/resolve/{revision}/{filename}  (endpoint: $HF_ENDPOINT, default
https://huggingface.co) and is cached once under  {cache}/hub/{owner--name}/{revision}/{filename}
(cache: $NANOFT_CACHE, default ~/.cache/nanoft). A download streams into `<dest>.incomplete` and is renamed into
place only when complete, so the cache never holds half a file; an interrupted download resumes from where it
stopped with an HTTP Range request. HF_HUB_OFFLINE=1 or NANOFT_OFFLINE=1 (or offline=True) never touches the
network: is_offline is the one switch for every download nanoft makes, models and data sets alike.
"""
from __future__ import annotations

import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from nanoft.io.files import sha256_file

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20  # 1 MiB reads keep memory flat for multi-GB checkpoints
RETRIES = 3  # a dropped connection is retried (resuming) this many times before giving up
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2" or "owner/name"


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("NANOFT_CACHE") or Path.home() / ".cache" / "nanoft").expanduser()


OFFLINE_VARS = ("HF_HUB_OFFLINE", "NANOFT_OFFLINE")  # transformers' switch, and nanoft's own


def is_offline(offline: Optional[bool] = None) -> bool:
    """offline=True/False decides; None asks the environment: either variable set to 1/true/yes/on."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_url(repo_id: str, filename: str, revision: str = "main") -> str:
    return f"{_endpoint()}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(filename)}"


def cached_file_path(repo_id: str, filename: str, revision: str = "main", cache_dir=None) -> Path:
    # "/" is not allowed in a folder name, so owner/name -> owner--name (the hub's own cache does the same)
    return cache_root(cache_dir) / "hub" / repo_id.replace("/", "--") / revision.replace("/", "--") / filename


def resolve(name_or_path, filename: str, *, revision: str = "main", cache_dir=None,
            offline: Optional[bool] = None, required: bool = True) -> Optional[Path]:
    """Local path of `filename` from a local folder (which always wins) or a hub repo id (downloaded once, then
    cached). With required=False a file the repo does not have gives None instead of an error, so callers can
    probe: model.safetensors first, then pytorch_model.bin."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if not required:
            return None
        raise FileNotFoundError(f"no {filename} in local folder {folder}: pass a folder in Hugging Face format "
                                "(config.json + model.safetensors or pytorch_model.bin)")

    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file: pass the folder that holds it (with config.json beside it)")
    repo_id = str(name_or_path)
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise FileNotFoundError(f"{repo_id!r} is neither a local folder nor a hub id like 'gpt2' or 'owner/name': "
                                "check the path, or pass a hub repo id")
    cached = cached_file_path(repo_id, filename, revision, cache_dir)
    if cached.is_file():
        return cached
    if is_offline(offline):
        if not required:
            return None
        raise FileNotFoundError(f"offline mode (HF_HUB_OFFLINE=1, NANOFT_OFFLINE=1 or offline=True): {filename} of repo {repo_id} is "
                                f"not in the cache at {cached}: run once online to download it, or pass a local folder")
    try:
        return download_file(hub_url(repo_id, filename, revision), cached, desc=f"{repo_id}/{filename}",
                             token=os.environ.get("HF_TOKEN") or None)
    except FileNotFoundError:  # HTTP 404: the repo exists (a missing repo answers 401) but not this file
        if not required:
            return None
        raise FileNotFoundError(f"no file {filename} in repo {repo_id} (revision {revision}) at {_endpoint()}: "
                                "check the repo id and revision, or pass a local folder") from None
    except PermissionError:  # HTTP 401/403
        raise PermissionError(f"repo {repo_id} not found at {_endpoint()} (or private/gated), and there is no local "
                              f"folder {repo_id!r} either: check the name or path, or set HF_TOKEN for a private "
                              "or gated repo") from None


def download_file(url: str, dest, desc: Optional[str] = None, sha256: Optional[str] = None,
                  offline: Optional[bool] = None, *, token: Optional[str] = None) -> Path:
    """Download `url` to `dest` (returns dest as a Path). A file already at dest is kept (when it matches sha256,
    if given). Streams into dest + ".incomplete", resumes a partial file with an HTTP Range request, shows a tqdm
    bar, verifies sha256 and renames into place atomically. `token` goes in an Authorization header."""
    dest = Path(dest)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        print(f"nanoft: {dest} does not match its sha256; downloading it again")
        dest.unlink()
    if is_offline(offline):
        raise FileNotFoundError(f"offline mode (HF_HUB_OFFLINE=1, NANOFT_OFFLINE=1 or offline=True) and {dest} is not downloaded yet: "
                                f"run once online to fetch {url}, or put the file there yourself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".incomplete")

    for attempt in range(1, RETRIES + 1):
        try:
            if _fetch(url, partial, desc or dest.name, token):
                break
        except (ConnectionError, TimeoutError, socket.timeout, urllib.error.URLError, http.client.HTTPException) as e:
            # network trouble (refused, reset, timed out, a 5xx): try again, resuming from what already arrived
            if attempt == RETRIES:
                raise ConnectionError(f"could not download {url} ({_reason(e)}): check the network and run "
                                      f"again{_resumes(partial)}, or set HF_HUB_OFFLINE=1 to use the cache only"
                                      ) from None
        else:
            if attempt == RETRIES:
                raise ConnectionError(f"download of {url} kept stopping early: run again{_resumes(partial)}")

    if sha256 is not None:
        got = sha256_file(partial)
        if got != sha256.lower():
            partial.unlink()  # a wrong file must not be resumed from next time
            raise ValueError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}: the file changed "
                             "upstream or was corrupted in transit; run again, or update the expected hash")
    # atomic on one filesystem: readers see no file or the whole file. Not files.atomic_write, whose temp file has a
    # random name: a download must resume, so its partial file needs a name the next run can find
    os.replace(partial, dest)
    return dest


def _fetch(url: str, partial: Path, desc: str, token: Optional[str]) -> bool:
    """One HTTP request appending to `partial`. True when the whole body arrived, False when it stopped early."""
    offset = partial.stat().st_size if partial.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "nanoft"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    if token:
        # unredirected: the token is for the hub itself, not for the CDN it redirects file downloads to
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # Range Not Satisfiable: the partial file is not a prefix we can extend
            partial.unlink()
            return False
        raise _http_error(url, e) from None

    with resp:
        if offset and resp.status != 206:  # the server ignored Range and sends the whole file: start over
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(partial, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    # urllib returns b"" (no exception) when a connection drops mid-body, so compare against Content-Length
    return total is None or partial.stat().st_size >= total


def _http_error(url: str, e: urllib.error.HTTPError) -> Exception:
    if e.code == 404:
        return FileNotFoundError(f"not found (HTTP 404): {url}: check the name, revision and file name")
    if e.code in (401, 403):
        return PermissionError(f"HTTP {e.code} for {url}: the repo does not exist, or is private/gated: check the "
                               "repo id, or set HF_TOKEN to a token that has access")
    return ConnectionError(f"HTTP {e.code} {e.reason} for {url}: try again later, or pass a local folder")


def _reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or e) or type(e).__name__


def _resumes(partial: Path) -> str:
    # promise a resume only when there is something to resume from: a refused connection leaves no partial file
    size = partial.stat().st_size if partial.is_file() else 0
    return f" (it resumes from the {size:,} bytes in {partial})" if size else ""
