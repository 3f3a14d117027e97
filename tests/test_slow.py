"""Longer checks behind the `slow` marker (`python -m pytest -m slow`, about 20 minutes on 2 CPU cores): the
real-size model configurations against transformers, and chapter 13's default run against the figures the README
publishes. The default suite checks the same code on small configurations and at smoke sizes."""
import json

import pytest
import torch
import transformers

from chapters import ch13_language_understanding as ch13
from nanoft.bert import BERT
from nanoft.gpt2 import GPT2

pytestmark = pytest.mark.slow


def test_gpt2_124m_logits_match_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # the defaults are GPT-2 small: 124 M
    hf.save_pretrained(tmp_path)
    ours = GPT2.from_pretrained(tmp_path).eval()
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters()) == 124_439_808
    ids = torch.randint(0, 50257, (2, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)  # (B, T, V): logits alone when there are no targets and no cache
    assert (got - expected).abs().max().item() < 1e-4


def test_bert_base_hidden_states_match_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig()).eval()  # the defaults are bert-base: 12 x 768
    hf.save_pretrained(tmp_path)
    ours = BERT.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 30522, (2, 128), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 90:] = 0  # the second sentence is padded
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask)
        hidden = ours(ids, attention_mask=mask)
        pooled = ours.pool(hidden)
    real = mask.bool()  # padded positions hold nothing anyone reads
    assert (hidden[real] - expected.last_hidden_state[real]).abs().max().item() < 1e-4
    assert (pooled - expected.pooler_output).abs().max().item() < 1e-4


# What the README says chapter 13's default run prints (2026-11-23). Another CPU may round some sums differently
# and flip a few predictions, so the check allows a point or two; a broken recipe misses by far more.
README_FIGURES = {("frozen", "acc"): 0.509, ("full", "acc"): 0.812, ("tapt", "acc"): 0.786,
                  ("multitask", "acc"): 0.811, ("frozen", "f1"): 8.6, ("full", "f1"): 12.0, ("multitask", "f1"): 42.9}


def test_chapter13_default_run_reproduces_the_readme(shared_data_dir, tmp_path):
    if shared_data_dir is None:
        pytest.skip("needs the real SST-2 and SQuAD files: set NANOFT_DATA or put shared/data beside the clone")
    ch13.main(["--data-dir", str(shared_data_dir), "--out-dir", str(tmp_path), "--no-progress"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    got = {(r["key"], "acc" if "acc" in r else "f1"): r["acc"] if "acc" in r else r["f1"] for r in rows}
    assert got.keys() == README_FIGURES.keys()
    for key, published in README_FIGURES.items():
        tolerance = 0.02 if key[1] == "acc" else 2.0
        assert abs(got[key] - published) <= tolerance, (key, got[key], published)
