"""Chapter 13 end to end at a tiny size (the real MiniLM, a few steps, tiny subsets, short sequences), and the
chapter's own pieces: the masked-LM loss shortcut, SQuAD padding cuts, the split by article, --help."""
import json
import math

import pytest
import torch

from chapters import ch13_language_understanding as ch13
from nanoft.bert import BertConfig, BertForMaskedLM
from nanoft.heads import MultiTaskModel, SpanHead
from nanoft.mlm import MLMCollator

TINY = ["--sst2-train", "48", "--sst2-val", "16", "--sst2-dev", "24", "--max-len", "32", "--batch-size", "8",
        "--sst2-steps", "1", "--tapt-steps", "1", "--lrs", "1e-4", "--squad-train-questions", "12",
        "--squad-val-questions", "4", "--squad-eval-questions", "6", "--squad-max-len", "64", "--doc-stride", "16",
        "--squad-batch-size", "4", "--squad-steps", "1", "--evals", "1", "--device", "cpu", "--no-progress"]


def test_chapter_runs_end_to_end_and_prints_one_row_per_method_and_task(shared_data_dir, tmp_path, monkeypatch, capsys):
    if shared_data_dir is None:  # a fresh clone: no data, no network -> the bundled samples
        monkeypatch.delenv("NANOFT_DATA", raising=False)
        monkeypatch.setenv("NANOFT_OFFLINE", "1")
        monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
        data = []
    else:
        data = ["--data-dir", str(shared_data_dir)]
    threads = torch.get_num_threads()
    try:  # one thread: on a busy CI machine two threads that wait for each other are several times slower
        rows = ch13.main(TINY + data + ["--out-dir", str(tmp_path / "out"), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out

    got = {(r["key"], "sst2" if "acc" in r else "squad") for r in rows}
    expected = {(k, t) for k in ("frozen", "full", "multitask") for t in ("sst2", "squad")} | {("tapt", "sst2")}
    assert got == expected
    for r in rows:
        if "acc" in r:
            assert 0.0 <= r["acc"] <= 1.0
        else:
            assert 0.0 <= r["exact_match"] <= r["f1"] + 1e-9 <= 100.0 + 1e-9  # an exact match is also a full F1 match
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
    squad_rows = [r for r in rows if "f1" in r]
    if shared_data_dir is None:
        assert all("SAMPLE" in r["task"] for r in rows) and "SAMPLE data" in out
    else:
        assert all(r["task"].startswith("SQuAD v1.1 dev, article split: eval.json (6 of 1,988 q)") for r in squad_rows)
        assert all(r["task"] == "SST-2 dev, first 24 of 872" for r in rows if "acc" in r)
    # ONE table with the four columns, one line per row
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert [c.strip() for c in header.split("|")] == ["method", "task", "metric", "training time"]
    assert sum(r["method"] in line and r["metric"] in line for r in rows for line in out.splitlines()) >= len(rows)
    assert "no masked-LM head" in out  # MiniLM's fresh MLM head is announced
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["metric"] for r in saved["rows"]] == [r["metric"] for r in rows]


def tiny_config():
    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      max_position_embeddings=64)


def test_masked_lm_loss_equals_the_full_models_loss():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config()).eval()
    collate = MLMCollator(mask_token_id=4, pad_token_id=0, vocab_size=120, special_ids=(0, 1, 2, 3, 4),
                          mlm_probability=0.3, generator=torch.Generator().manual_seed(0))
    batch = collate([torch.randint(5, 120, (n,)).tolist() for n in (12, 7, 20, 3)])
    assert (batch["labels"] != -100).any()
    with torch.no_grad():
        _, full = model(**batch)
        assert ch13.masked_lm_loss(model, batch).item() == pytest.approx(full.item(), rel=1e-5)
        nothing = dict(batch, labels=torch.full_like(batch["labels"], -100))
        assert ch13.masked_lm_loss(model, nothing).item() == 0.0  # no picked token: zero, not NaN


def test_squad_collate_cuts_only_padding():
    torch.manual_seed(0)
    encoder = ch13.BERT(tiny_config())
    model = MultiTaskModel(encoder, {"squad": SpanHead(32)}).eval()
    T, lengths = 24, (10, 17, 13)
    feats = []
    for n in lengths:
        mask = torch.zeros(T, dtype=torch.long)
        mask[:n] = 1
        feats.append({"input_ids": torch.randint(5, 120, (T,)) * mask, "attention_mask": mask,
                      "token_type_ids": torch.zeros(T, dtype=torch.long), "start_positions": torch.tensor(n - 2),
                      "end_positions": torch.tensor(n - 1)})
    cut = ch13.squad_collate(feats)
    assert cut["input_ids"].shape == (3, max(lengths)) and cut["start_positions"].tolist() == [8, 15, 11]
    full = ch13.squad.collate(feats)
    with torch.no_grad():
        s_cut, e_cut = model("squad", cut)["logits"]
        s_full, e_full = model("squad", full)["logits"]
    for i, n in enumerate(lengths):  # the real tokens score the same with or without the trailing pads
        torch.testing.assert_close(s_cut[i, :n], s_full[i, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e_cut[i, :n], e_full[i, :n], atol=1e-5, rtol=1e-5)


def test_split_by_article_keeps_articles_whole():
    examples = [{"title": f"article {a}", "id": f"{a}-{q}"} for a in range(20) for q in range(3)]
    train, val = ch13.split_by_article(examples)
    assert {e["title"] for e in val} == {"article 18", "article 19"}
    assert not {e["title"] for e in train} & {e["title"] for e in val}
    assert len(train) + len(val) == len(examples)
    with pytest.raises(ValueError, match="at least 2"):
        ch13.split_by_article(examples[:3])


def test_every_flag_is_explained_and_full_changes_the_sizes():
    parser = ch13.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    quick, full = ch13.parse_args([]), ch13.parse_args(["--full"])
    assert (quick.max_len, quick.squad_max_len, quick.doc_stride) == (64, 192, 64)
    assert (full.max_len, full.squad_max_len, full.doc_stride) == (128, 384, 128)
    assert (full.sst2_train, full.squad_train_n, full.squad_eval_n) == (0, 0, 0)  # all the data
    assert full.sst2_steps is None  # --epochs passes instead
    assert ch13.parse_args(["--full", "--max-len", "96"]).max_len == 96
    with pytest.raises(SystemExit):
        ch13.parse_args(["--loss-weights", "sst2=1"])


def test_a_fresh_clone_without_data_uses_the_samples_and_labels_them(tmp_path, monkeypatch, minilm_dir, capsys):
    monkeypatch.delenv("NANOFT_DATA", raising=False)
    monkeypatch.setenv("NANOFT_OFFLINE", "1")
    monkeypatch.setenv("NANOFT_CACHE", str(tmp_path / "cache"))
    args = ch13.parse_args(["--model", str(minilm_dir)])
    tok = ch13.load_bert_tokenizer(minilm_dir)
    sst2, squad_data = ch13.load_sst2(args, tok), ch13.load_squad(args, tok)
    assert sst2["sample"] and squad_data["sample"]
    assert sst2["label"].startswith("SAMPLE") and squad_data["label"].startswith("SAMPLE")
    assert "article split" not in squad_data["label"]  # the sample is not the SQuAD dev split: don't say it is
    assert len(sst2["val"]) == 60 and len(sst2["train"]) == 240  # at most a fifth of the 300 sample rows for val
    val_ids = {ex["id"] for ex in squad_data["val_examples"]}
    assert val_ids and {f["example_id"] for f in squad_data["val"]} == val_ids  # every val question has windows
    assert "small sample" in capsys.readouterr().out  # nanoft.data's notice
