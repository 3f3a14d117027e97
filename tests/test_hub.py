"""nanoft.io.hub against a local HTTP server laid out like the hub: /<repo_id>/resolve/<revision>/<filename>."""
import hashlib
import http.server
import json
import os
import threading

import pytest
import torch

from nanoft.io import hub
from nanoft.io.hub import download_file, resolve


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.root by URL path, with Range support. Knobs on the server object:
    drop_after[path] = n: the next response for path stops after n bytes and closes the connection;
    ignore_range: answer 200 with the whole file even when asked for a range (servers may do that)."""

    def do_GET(self):
        srv = self.server
        srv.log.append({"path": self.path, "range": self.headers.get("Range"),
                        "auth": self.headers.get("Authorization")})
        path = os.path.join(srv.root, self.path.lstrip("/"))
        repo = os.path.join(srv.root, self.path.lstrip("/").split("/resolve/")[0])
        if not os.path.isdir(repo):  # like the hub: an unknown (or private) repo is 401, a missing file 404
            self.send_error(401)
            return
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.drop_after.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])  # then the connection closes (HTTP/1.0)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "server"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    srv.root, srv.log, srv.drop_after, srv.ignore_range = str(root), [], {}, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NANOFT_OFFLINE", raising=False)  # CI sets it; these tests talk to a local server only
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def publish(srv, repo, filename, data: bytes, revision="main"):
    path = os.path.join(srv.root, repo, "resolve", revision, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return f"/{repo}/resolve/{revision}/{filename}"


def test_download_then_cache_hit(server, tmp_path):
    data = os.urandom(100_000)
    publish(server, "someone/tiny", "model.safetensors", data)
    path = resolve("someone/tiny", "model.safetensors")
    assert path == tmp_path / "cache" / "hub" / "someone--tiny" / "main" / "model.safetensors"
    assert path.read_bytes() == data
    assert len(server.log) == 1
    assert resolve("someone/tiny", "model.safetensors") == path
    assert len(server.log) == 1  # served from the cache: the server was not asked again
    assert not list(path.parent.glob("*.incomplete"))


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = os.urandom(300_000)
    url_path = publish(server, "someone/tiny", "model.safetensors", data)
    server.drop_after[url_path] = 120_000  # the first response dies after 120 kB
    path = resolve("someone/tiny", "model.safetensors")
    assert path.read_bytes() == data
    assert [r["range"] for r in server.log] == [None, "bytes=120000-"]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    data = os.urandom(50_000)
    publish(server, "o/r", "f.bin", data)
    dest = tmp_path / "out" / "f.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "f.bin.incomplete").write_bytes(data[:20_000])
    download_file(f"{server.url}/o/r/resolve/main/f.bin", dest, sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.log[0]["range"] == "bytes=20000-"
    assert not (tmp_path / "out" / "f.bin.incomplete").exists()


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    data = os.urandom(50_000)
    publish(server, "o/r", "f.bin", data)
    server.ignore_range = True
    (tmp_path / "f.bin.incomplete").write_bytes(b"stale bytes")
    download_file(f"{server.url}/o/r/resolve/main/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data  # the 200 body replaced the partial file, not appended to it


def test_partial_file_longer_than_remote_restarts(server, tmp_path):
    data = os.urandom(1000)
    publish(server, "o/r", "f.bin", data)
    (tmp_path / "f.bin.incomplete").write_bytes(os.urandom(5000))  # 416 Range Not Satisfiable
    download_file(f"{server.url}/o/r/resolve/main/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data


def test_sha256_mismatch_keeps_nothing(server, tmp_path):
    publish(server, "o/r", "f.bin", b"hello")
    with pytest.raises(ValueError, match="sha256 mismatch") as e:
        download_file(f"{server.url}/o/r/resolve/main/f.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.incomplete").exists()


def test_offline_uses_cache_and_errors_clearly(server, monkeypatch):
    publish(server, "someone/tiny", "config.json", b"{}")
    cached = resolve("someone/tiny", "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("someone/tiny", "config.json") == cached
    publish(server, "someone/tiny", "model.safetensors", b"x")
    with pytest.raises(FileNotFoundError) as e:
        resolve("someone/tiny", "model.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and "offline" in msg and "someone/tiny" in msg and "model.safetensors" in msg
    assert "run once online" in msg and "local folder" in msg
    assert resolve("someone/tiny", "model.safetensors", required=False) is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FileNotFoundError, match="offline"):
        resolve("someone/tiny", "model.safetensors", offline=True)
    monkeypatch.setenv("NANOFT_OFFLINE", "1")  # nanoft's own switch counts for the hub too: one is_offline
    assert hub.is_offline() and not hub.is_offline(False)
    with pytest.raises(FileNotFoundError, match="NANOFT_OFFLINE"):
        resolve("someone/tiny", "model.safetensors")
    assert len(server.log) == 1  # only the first, online, download reached the server


def test_missing_file_is_a_clear_404(server):
    publish(server, "someone/tiny", "config.json", b"{}")
    with pytest.raises(FileNotFoundError) as e:
        resolve("someone/tiny", "model.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and "no file model.safetensors in repo someone/tiny" in msg
    assert resolve("someone/tiny", "model.safetensors", required=False) is None


def test_unknown_repo_or_path_is_a_clear_error(server, tmp_path):
    with pytest.raises(PermissionError) as e:
        resolve("nobody/nothing", "config.json")
    msg = str(e.value)
    assert "\n" not in msg and "repo nobody/nothing not found" in msg and "no local folder" in msg
    assert "HF_TOKEN" in msg
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        resolve(str(tmp_path / "no" / "such" / "folder"), "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="pass the folder"):
        resolve(tmp_path / "model.safetensors", "config.json")


def test_local_folder_wins_and_token_is_sent(server, tmp_path, monkeypatch):
    folder = tmp_path / "someone" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # "someone/tiny" is now also a relative folder: the folder wins
    assert resolve("someone/tiny", "config.json") == folder.relative_to(tmp_path) / "config.json"
    assert server.log == []
    with pytest.raises(FileNotFoundError, match="no model.safetensors in local folder"):
        resolve(folder, "model.safetensors")

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    publish(server, "other/repo", "config.json", b"{}")
    resolve("other/repo", "config.json")
    assert server.log[-1]["auth"] == "Bearer hf_secret"


def test_unreachable_endpoint_is_a_clear_error(server, monkeypatch):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionError) as e:
        resolve("someone/tiny", "config.json")
    assert "\n" not in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert "resumes" not in str(e.value)  # nothing arrived, so there is no partial file to resume from


def test_failed_download_names_its_partial_file_only_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NANOFT_OFFLINE", raising=False)

    def refused(url, partial, desc, token):
        partial.write_bytes(b"x" * bytes_before_failing)
        raise ConnectionRefusedError("refused")
    monkeypatch.setattr(hub, "_fetch", refused)
    for bytes_before_failing, says_resume in [(0, False), (1234, True)]:
        with pytest.raises(ConnectionError) as e:
            download_file("http://127.0.0.1:9/f.bin", tmp_path / "f.bin")
        msg = str(e.value)
        assert "\n" not in msg and "could not download http://127.0.0.1:9/f.bin" in msg
        assert ("resumes from the 1,234 bytes in" in msg and "f.bin.incomplete" in msg) == says_resume, msg


def test_gpt2_from_pretrained_through_the_hub(server, tmp_path):
    transformers = pytest.importorskip("transformers")
    from nanoft.models.gpt2 import GPT2
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.save_pretrained(tmp_path / "export")
    for name in ("config.json", "model.safetensors"):
        publish(server, "someone/tiny-gpt2", name, (tmp_path / "export" / name).read_bytes())

    model = GPT2.from_pretrained("someone/tiny-gpt2")
    x = torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        assert (model(x)[0] - ref(x).logits).abs().max() < 1e-4
    assert [r["path"] for r in server.log] == ["/someone/tiny-gpt2/resolve/main/config.json",
                                               "/someone/tiny-gpt2/resolve/main/model.safetensors"]
    # a second load is served from the cache, even offline
    GPT2.from_pretrained("someone/tiny-gpt2", offline=True)
    assert len(server.log) == 2


def test_sharded_bin_checkpoint_through_the_hub(server, tmp_path):
    """No model.safetensors: the loader probes (404s), then falls back to a sharded pytorch_model.bin."""
    transformers = pytest.importorskip("transformers")
    from nanoft.models.gpt2 import GPT2
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    sd = ref.state_dict()
    names = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in shards.items():
        torch.save({k: sd[k].clone() for k in keys}, tmp_path / shard)
        publish(server, "someone/sharded", shard, (tmp_path / shard).read_bytes())
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    publish(server, "someone/sharded", "pytorch_model.bin.index.json", json.dumps(index).encode())
    publish(server, "someone/sharded", "config.json", cfg.to_json_string().encode())

    model = GPT2.from_pretrained("someone/sharded", revision="main")
    x = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert (model(x)[0] - ref(x).logits).abs().max() < 1e-4
    assert hub.cached_file_path("someone/sharded", "pytorch_model-00002-of-00002.bin").is_file()


def test_llama_from_pretrained_through_the_hub_sharded_safetensors(server, tmp_path):
    """A Qwen2 (Llama with q/k/v biases) saved in safetensors shards: index first, then each shard, then the cache."""
    transformers = pytest.importorskip("transformers")
    from nanoft import Llama
    cfg = transformers.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path / "export", max_shard_size="20KB")
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    for name in files:
        publish(server, "someone/tiny-qwen2", name, (tmp_path / "export" / name).read_bytes())

    model = Llama.from_pretrained("someone/tiny-qwen2")
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert (model(x)[0] - ref(x).logits).abs().max() < 1e-4
    fetched = {r["path"].rsplit("/", 1)[1] for r in server.log}
    assert {"config.json", "model.safetensors.index.json"} <= fetched and all(
        name in fetched for name in files if name.endswith(".safetensors"))
    n = len(server.log)
    Llama.from_pretrained("someone/tiny-qwen2", offline=True)  # from the cache, even offline
    assert len(server.log) == n
