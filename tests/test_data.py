"""nanoft.data.datasets: where files are found (local folder -> cache -> download -> sample), checksums, and the readers, on
the real public files (../shared/data) and on the bundled samples. Downloads go to a local http.server only."""
import hashlib
import http.server
import io
import shutil
import threading
import zipfile
from collections import Counter

import pytest

from nanoft.data import datasets as data
from nanoft.data.datasets import MANIFEST, SAMPLE_DIR, check_sha256, dataset_path, read_sst2, read_text, sha256_file
from nanoft.data.squad import load_squad_examples

REAL_COUNTS = {"sst2/train.tsv": 67349, "sst2/dev.tsv": 872, "squad_v1.1/dev-v1.1.json": 10570,
               "squad_v1.1_devsplit/train.json": 8582, "squad_v1.1_devsplit/eval.json": 1988}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty cache, no NANOFT_DATA, offline unless a test says otherwise, and no proxy for 127.0.0.1."""
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")
    for var in ["NANOFT_DATA", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"]:
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _count(name, path):
    return len(read_sst2(path) if name.endswith(".tsv") else load_squad_examples(path))


# ----------------------------------------------------------------------------- the manifest and the samples


def test_manifest_matches_published_checksums(shared_data_dir):
    for name, entry in MANIFEST.items():
        assert (SAMPLE_DIR / entry["sample"]).is_file(), name
        assert ("url" in entry) != ("derive" in entry), name
        if "url" in entry:
            assert entry["url"].startswith("https://"), name
    if shared_data_dir is None or not (shared_data_dir / "SHA256SUMS").is_file():
        pytest.skip("../shared/data not available")
    sums = dict(reversed(line.split()) for line in (shared_data_dir / "SHA256SUMS").read_text().splitlines())
    assert sums and all(MANIFEST[name]["sha256"] == sha for name, sha in sums.items())


def test_samples_have_the_real_formats_and_are_small():
    train, dev = read_sst2(SAMPLE_DIR / "sst2_sample/train.tsv"), read_sst2(SAMPLE_DIR / "sst2_sample/dev.tsv")
    assert len(train) == 300 and len(dev) == 80
    assert Counter(y for _, y in train) == {0: 150, 1: 150} and Counter(y for _, y in dev) == {0: 40, 1: 40}
    assert not {s for s, _ in train} & {s for s, _ in dev}
    assert all(s == s.lower() for s, _ in train + dev)
    for split, n in [("train", 49), ("eval", 16)]:
        examples = load_squad_examples(SAMPLE_DIR / f"squad_sample/{split}.json")
        assert len(examples) == n and len({e["id"] for e in examples}) == n
        for e in examples:
            for a in e["answers"]:
                assert e["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"], e["id"]
    assert 40_000 < len(read_text(SAMPLE_DIR / "lm_sample.txt")) < 60_000
    assert 20_000 < len(read_text(SAMPLE_DIR / "lm_sample_play.txt")) < 40_000
    total = sum(f.stat().st_size for f in (SAMPLE_DIR.parent).rglob("*") if f.is_file())
    assert total < 300_000


# ----------------------------------------------------------------------------- the real files


@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_readers_on_the_real_files(shared_data_dir, name):
    if shared_data_dir is None:
        pytest.skip("../shared/data not available")
    f = dataset_path(name, shared_data_dir)
    assert f == (shared_data_dir / name, False)
    assert _count(name, f.path) == REAL_COUNTS[name]
    if name == "sst2/train.tsv":
        rows = read_sst2(f.path)
        assert Counter(y for _, y in rows) == {1: 37569, 0: 29780}
        assert rows[0] == ("hide new secretions from the parental units ", 0)
    if name.endswith(".json"):
        for e in load_squad_examples(f.path):
            for a in e["answers"]:
                assert e["context"][a["answer_start"]:].startswith(a["text"])


def test_devsplit_is_derived_byte_for_byte(shared_data_dir, tmp_path, capsys):
    if shared_data_dir is None:
        pytest.skip("../shared/data not available")
    only_dev = tmp_path / "only_dev"
    (only_dev / "squad_v1.1").mkdir(parents=True)
    shutil.copy(shared_data_dir / "squad_v1.1/dev-v1.1.json", only_dev / "squad_v1.1")
    for part in ["train", "eval"]:
        name = f"squad_v1.1_devsplit/{part}.json"
        f = dataset_path(name, only_dev)
        assert f == (data.data_cache() / name, False)
        assert f.path.read_bytes() == (shared_data_dir / name).read_bytes()
        assert _count(name, f.path) == REAL_COUNTS[name]
    assert "sample" not in capsys.readouterr().out
    assert dataset_path("squad_v1.1_devsplit/eval.json").path == data.data_cache() / "squad_v1.1_devsplit/eval.json"


# ----------------------------------------------------------------------------- where files are found


def test_resolution_order(tmp_path, monkeypatch, capsys):
    name = "sst2/dev.tsv"
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for folder in (explicit, env):
        (folder / "sst2").mkdir(parents=True)
        (folder / name).write_text("sentence\tlabel\nok .\t1\n")
    cached = data.data_cache() / name
    cached.parent.mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "sst2_sample/dev.tsv", cached)
    monkeypatch.setitem(MANIFEST[name], "sha256", sha256_file(cached))

    monkeypatch.setenv("NANOFT_DATA", str(env))
    assert dataset_path(name, explicit) == (explicit / name, False)      # 1. the argument
    assert dataset_path(name) == (env / name, False)                     # 1. NANOFT_DATA
    monkeypatch.delenv("NANOFT_DATA")
    assert dataset_path(name) == (cached, False)                         # 2. the cache
    cached.write_text("sentence\tlabel\ncorrupted .\t0\n")
    f = dataset_path(name)                                               # a cached file with the wrong sha256
    assert f == (SAMPLE_DIR / "sst2_sample/dev.tsv", True) and not cached.exists()
    assert "does not match its sha256" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _fresh_sample_notices(monkeypatch):
    monkeypatch.setattr(data, "_announced", set())  # each test sees the notice as a fresh process would
    monkeypatch.setattr(data, "_failed_urls", set())  # and tries each download again, as a fresh process would


def test_a_named_folder_without_the_file_is_an_error(tmp_path, monkeypatch, capsys):
    """A mistyped or incomplete --data-dir must not quietly train on the samples: the error names folder and file."""
    folder = tmp_path / "mydata"
    (folder / "sst2").mkdir(parents=True)
    (folder / "sst2/dev.tsv").write_text("sentence\tlabel\nok .\t1\n")
    cached = data.data_cache() / "sst2/train.tsv"  # even a good cached copy is not used in its place
    cached.parent.mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "sst2_sample/train.tsv", cached)
    monkeypatch.setitem(MANIFEST["sst2/train.tsv"], "sha256", sha256_file(cached))
    assert dataset_path("sst2/dev.tsv", folder) == (folder / "sst2/dev.tsv", False)
    with pytest.raises(FileNotFoundError) as e:
        dataset_path("sst2/train.tsv", folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"data folder {folder} (from --data-dir) has no sst2/train.tsv: "), msg
    assert f"put it at {folder / 'sst2/train.tsv'}, or leave --data-dir unset" in msg
    monkeypatch.setenv("NANOFT_DATA", str(folder))  # a folder named by the environment is named too
    with pytest.raises(FileNotFoundError, match=r"\(from NANOFT_DATA\) has no sst2/train.tsv: .*leave NANOFT_DATA "):
        dataset_path("sst2/train.tsv")
    # a file cut from another names both
    with pytest.raises(FileNotFoundError, match=r"has no squad_v1.1_devsplit/eval.json \(or squad_v1.1/dev-v1.1.json, "
                                                r"which it is cut from\)"):
        dataset_path("squad_v1.1_devsplit/eval.json", folder)
    assert "sample" not in capsys.readouterr().out


def test_offline_falls_back_to_the_sample_with_a_notice(monkeypatch, capsys):
    for env in ["NANOFT_OFFLINE", "HF_HUB_OFFLINE"]:
        data._announced.clear()
        monkeypatch.delenv("NANOFT_OFFLINE")
        monkeypatch.setenv(env, "1")
        f = dataset_path("squad_v1.1/train-v1.1.json")
        assert f == (SAMPLE_DIR / "squad_sample/train.json", True)
        out = capsys.readouterr().out
        assert ("using the small sample data/sample/squad_sample/train.json (written for nanoft) because "
                "squad_v1.1/train-v1.1.json was not found locally and could not be downloaded; pass --data-dir "
                "or set NANOFT_DATA") in out
        monkeypatch.delenv(env)
        monkeypatch.setenv("NANOFT_OFFLINE", "1")
    assert dataset_path("tiny_shakespeare/input.txt", download=False).path.name == "lm_sample_play.txt"
    capsys.readouterr()
    dataset_path("tiny_shakespeare/input.txt", download=False)
    assert "using the small sample" not in capsys.readouterr().out  # the notice comes once per file


def test_bad_names_and_folders(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="unknown dataset file 'sst2/test.tsv': use one of sst2/train.tsv"):
        dataset_path("sst2/test.tsv")
    with pytest.raises(FileNotFoundError, match="--data-dir /no/such/dir: no such folder: give a folder laid out like "
                                                "../shared/data \\(this needs sst2/dev.tsv in it\\)"):
        dataset_path("sst2/dev.tsv", "/no/such/dir")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="--data-dir .*a_file is a file, not a folder"):
        dataset_path("tiny_shakespeare/input.txt", tmp_path / "a_file")
    monkeypatch.setenv("NANOFT_DATA", "/no/such/dir")  # where the folder came from, when it came from the environment
    with pytest.raises(FileNotFoundError, match="NANOFT_DATA /no/such/dir: no such folder: NANOFT_DATA is set in your "
                                                "environment: point it to .* \\(this needs tiny_shakespeare/input.txt"):
        dataset_path("tiny_shakespeare/input.txt")


@pytest.mark.parametrize("text", ["sentence\tlabel\ncaf\xe9 cr\xe8me\t1\n".encode("latin-1"), bytes(range(256))])
def test_a_file_that_is_not_utf8_is_named_with_the_fix(tmp_path, text):
    path = tmp_path / "train.tsv"
    path.write_bytes(text)
    for read in (read_sst2, read_text):
        with pytest.raises(ValueError, match=f"{path}:\\d+: not UTF-8 text \\(byte 0x.. at offset \\d+\\): save it as UTF-8"):
            read(path)


def test_sha256_check_message(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello\n")
    good = _sha(b"hello\n")
    check_sha256(f, good)
    with pytest.raises(ValueError, match=f"sha256 mismatch for {f}: expected 0{{64}}, got {good}: the file is "
                                         f"corrupt or changed upstream; delete {f} and run again"):
        check_sha256(f, "0" * 64)


# ----------------------------------------------------------------------------- downloads (local server only)


class _Server:
    """http.server on 127.0.0.1 serving a folder, counting requests."""

    def __init__(self, folder):
        self.paths = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                outer.paths.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    s = _Server(www)
    s.www = www
    yield s
    s.close()


def test_download_zip_member_through_local_server(server, monkeypatch, capsys):
    monkeypatch.delenv("NANOFT_OFFLINE")
    train, dev = (SAMPLE_DIR / "sst2_sample/train.tsv").read_bytes(), (SAMPLE_DIR / "sst2_sample/dev.tsv").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SST-2/train.tsv", train)
        z.writestr("SST-2/dev.tsv", dev)
        z.writestr("SST-2/test.tsv", "index\tsentence\n0\tx\n")
    (server.www / "SST-2.zip").write_bytes(buf.getvalue())
    for name, content in [("sst2/train.tsv", train), ("sst2/dev.tsv", dev)]:
        monkeypatch.setitem(MANIFEST[name], "url", f"{server.url}/SST-2.zip")
        monkeypatch.setitem(MANIFEST[name], "sha256", _sha(content))

    f = dataset_path("sst2/train.tsv")
    assert f == (data.data_cache() / "sst2/train.tsv", False) and f.path.read_bytes() == train
    assert dataset_path("sst2/dev.tsv").path.read_bytes() == dev   # from the zip already downloaded
    assert server.paths == ["/SST-2.zip"]
    server.close()
    assert dataset_path("sst2/train.tsv") == f                      # then from the cache, no network
    assert "sample" not in capsys.readouterr().out
    assert len(read_sst2(f)) == 300  # a DataFile is path-like


def test_download_plain_file_and_checksum_failure(server, monkeypatch):
    monkeypatch.delenv("NANOFT_OFFLINE")
    name, text = "tiny_shakespeare/input.txt", b"FIRST SPEAKER:\nA line written for this test.\n"
    (server.www / "input.txt").write_bytes(text)
    monkeypatch.setitem(MANIFEST[name], "url", f"{server.url}/input.txt")
    monkeypatch.setitem(MANIFEST[name], "sha256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dataset_path(name)
    assert not any((data.data_cache() / "tiny_shakespeare").iterdir())  # no wrong or half file left behind
    monkeypatch.setitem(MANIFEST[name], "sha256", _sha(text))
    assert dataset_path(name).path.read_bytes() == text

    # a zip whose member does not match its checksum: an error that says what to do, and nothing cached
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("wikitext-2/wiki.valid.tokens", " = Not the real file = \n")
    (server.www / "wikitext-2-v1.zip").write_bytes(buf.getvalue())
    monkeypatch.setitem(MANIFEST["wikitext-2/wiki.valid.tokens"], "url", f"{server.url}/wikitext-2-v1.zip")
    with pytest.raises(ValueError, match="sha256 mismatch for .*wikitext-2-v1.zip:wikitext-2/wiki.valid.tokens.*"
                                         "delete .* and run again"):
        dataset_path("wikitext-2/wiki.valid.tokens")
    assert not (data.data_cache() / "wikitext-2/wiki.valid.tokens").exists()


def test_unreachable_source_falls_back_to_the_sample(server, monkeypatch, capsys):
    monkeypatch.delenv("NANOFT_OFFLINE")
    monkeypatch.setitem(MANIFEST["squad_v1.1/dev-v1.1.json"], "url", f"{server.url}/missing.json")
    f = dataset_path("squad_v1.1/dev-v1.1.json")
    assert f == (SAMPLE_DIR / "squad_sample/eval.json", True)
    out = capsys.readouterr().out
    assert "could not download squad_v1.1/dev-v1.1.json" in out and "using the small sample" in out
    assert "pass --data-dir or set NANOFT_DATA" in out  # true advice here: no folder was named
    # the devsplit is derived from dev-v1.1.json: without it, the devsplit's own sample
    assert dataset_path("squad_v1.1_devsplit/eval.json") == (SAMPLE_DIR / "squad_sample/eval.json", True)
    assert dataset_path("squad_v1.1_devsplit/train.json") == (SAMPLE_DIR / "squad_sample/train.json", True)
    assert server.paths == ["/missing.json"]  # a source that failed is not asked again in the same run
    assert "could not download" not in capsys.readouterr().out


def test_unreachable_archive_is_tried_once_and_promises_no_resume(monkeypatch, capsys):
    monkeypatch.delenv("NANOFT_OFFLINE")
    tries = []

    def refused(url, partial, desc, token):  # the network is down: no byte arrives, so no partial file exists
        tries.append(url)
        raise ConnectionRefusedError("Connection refused")
    monkeypatch.setattr(data.hub, "_fetch", refused)
    assert dataset_path("sst2/train.tsv").is_sample and dataset_path("sst2/dev.tsv").is_sample
    # train.tsv and dev.tsv share SST-2.zip: one download (with its retries), not one per file
    assert set(tries) == {MANIFEST["sst2/train.tsv"]["url"]} and len(tries) == data.hub.RETRIES
    out = capsys.readouterr().out
    assert out.count("nanoft: could not download") == 1, out
    assert "resumes" not in out and ".incomplete" not in out, out


# ----------------------------------------------------------------------------- readers: malformed input


@pytest.mark.parametrize("content, match", [
    ("index\tsentence\n0\tx\n", r"x.tsv:1: expected the header 'sentence\\tlabel'.*GLUE's test.tsv has no labels"),
    ("sentence\tlabel\ngood .\t1\nbad\tcolumns\t0\n", r"x.tsv:3: expected 'sentence<TAB>label' with label 0 or 1.*fix"),
    ("sentence\tlabel\ngood .\t1\nfine .\tpositive\n", r"x.tsv:3: .*label 0 or 1"),
    ("sentence\tlabel\ngood .\t1\n\n", r"x.tsv:3: "),
])
def test_read_sst2_rejects_malformed_rows(tmp_path, content, match):
    (tmp_path / "x.tsv").write_text(content)
    with pytest.raises(ValueError, match=match):
        read_sst2(tmp_path / "x.tsv")
