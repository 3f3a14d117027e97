"""Chapter 4 at toy size: pretrain a tiny GPT-2 into a temporary cache, then fine-tune it and train the LSTM with the
chapter script on Tiny Shakespeare (../shared/data when present, else the bundled sample)."""
import importlib.util
import json
import math

import pytest
import torch

from chapters import ch04_finetune_vs_scratch as ch04
from chapters import ch04_pretrain_small_gpt2 as pretrain
from nanoft.gpt2 import GPT2
from nanoft.tokenizer import load_gpt2_tokenizer

TINY_PRETRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--n-positions", "64", "--block-size", "32",
                 "--batch-size", "4", "--max-steps", "3", "--warmup-steps", "1", "--val-fraction", "0.002",
                 "--gen-tokens", "4", "--no-progress", "--device", "cpu"]
TINY_CHAPTER = ["--block-size", "32", "--batch-size", "4", "--max-steps", "4", "--eval-every", "2",
                "--warmup-steps", "1", "--val-fraction", "0.002", "--lstm-emb", "16", "--lstm-hidden", "16",
                "--gen-tokens", "8", "--no-progress", "--device", "cpu"]


def test_chapter4_tiny_run(tmp_path, monkeypatch, capsys, shared_data_dir):
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOFT_OFFLINE", "1")  # never download in tests: shared data or the sample
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    pretrain_main = pretrain.main
    # the chapter pretrains the offline model itself when it is not cached: at toy size here (later flags win)
    monkeypatch.setattr(pretrain, "main", lambda argv=None: pretrain_main(list(argv or []) + TINY_PRETRAIN))

    results = ch04.main(data + TINY_CHAPTER + ["--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "pretraining a small GPT-2 on WikiText-2 first" in out

    # the offline pretrained model: saved in Hugging Face format into the cache, loadable by GPT2.from_pretrained
    folder = pretrain.cached_model_dir(shared_data_dir)
    assert str(folder).startswith(str(tmp_path)) and results["model"] == str(folder)
    model = GPT2.from_pretrained(folder)
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (1, 16, 50257)
    tok = load_gpt2_tokenizer(folder)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's own BPE ids, from the folder's tokenizer.json
    info = json.loads((folder / pretrain.INFO_FILE).read_text())
    assert info["steps"] == 3 and info["is_sample"] == (shared_data_dir is None)
    assert results["pretrain"] == info
    # a second run reuses it instead of training again
    assert pretrain_main(data + TINY_PRETRAIN) == folder
    assert "reusing it" in capsys.readouterr().out

    # task tokens: added after GPT-2's vocabulary, wrapped around each speech, present in the training ids
    assert "new rows = mean of the old rows: True" in out
    assert "[TASK_START]" in out and "[TASK_END]" in out  # the printed wrapped example
    assert results["task_tokens_in_train"] > 0

    # one row per evaluation (before training, steps 2 and 4) for both models, with finite perplexities
    for name in ("gpt2", "lstm"):
        rows = results[name]
        assert [r["step"] for r in rows] == [0, 2, 4]
        assert [r["tokens"] for r in rows] == [0, 2 * 4 * 32, 4 * 4 * 32]
        assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
        assert rows[0]["seconds"] == 0 and rows[1]["seconds"] > 0 and rows[2]["seconds"] > rows[1]["seconds"]
    table = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "|" in line]
    assert [int(t[0]) for t in table] == [0, 2, 4]
    assert [float(t[4]) for t in table] == pytest.approx([r["ppl"] for r in results["gpt2"]], abs=0.06)
    assert [float(t[7]) for t in table] == pytest.approx([r["ppl"] for r in results["lstm"]], abs=0.06)
    assert "To reach perplexity" in out
    assert all(s.startswith("[TASK_START]") for s in results["samples"].values())
    assert (tmp_path / "out" / "ch04_results.json").is_file()
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "out" / "ch04_perplexity.png").is_file() == has_matplotlib


def test_perplexity_is_token_weighted_exp_nll(tmp_path):
    """The chapter's numbers are exp(mean NLL over all validation tokens): check against F.cross_entropy directly."""
    from torch.utils.data import DataLoader

    from nanoft.gpt2 import GPT2Config
    from nanoft.lm_data import LMBlocks
    from nanoft.metrics import evaluate_lm

    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)).eval()
    blocks = LMBlocks(torch.randint(0, 50, (16 * 5 + 1,)), 16)
    got = evaluate_lm(model, DataLoader(blocks, batch_size=2), ch04.lm_loss)["perplexity"]  # batches of 2, 2, 1
    x, y = torch.stack([b["x"] for b in blocks]), torch.stack([b["y"] for b in blocks])
    expected = math.exp(torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    assert got == pytest.approx(expected, rel=1e-5)


def test_first_reaching_and_summary():
    gpt = [dict(step=0, tokens=0, seconds=0.0, ppl=900.0), dict(step=50, tokens=100, seconds=5.0, ppl=300.0),
           dict(step=100, tokens=200, seconds=10.0, ppl=200.0)]
    lstm = [dict(step=0, tokens=0, seconds=0.0, ppl=50000.0), dict(step=50, tokens=100, seconds=4.0, ppl=800.0),
            dict(step=100, tokens=200, seconds=8.0, ppl=350.0)]
    s = ch04.summarize(gpt, lstm, None, "gpt2")
    assert s["target_ppl"] == 350.0 and s["lstm_reached"]["step"] == 100 and s["gpt2_reached"]["step"] == 50
    assert ch04.first_reaching(gpt, 100.0) is None


def test_detokenize_wikitext():
    text = ' = Homarus gammarus = \n It weighs 1 @,@ 000 kg ( 2 @.@ 2 lb ) , and is " well @-@ known " . It \'s big .\n'
    assert pretrain.detokenize_wikitext(text) == (' = Homarus gammarus = \n It weighs 1,000 kg (2.2 lb), and is '
                                                  '"well-known". It\'s big.\n')
