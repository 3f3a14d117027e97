"""The exercises of chapter 4 (chapters/ch04_exercises.md).

Every solution runs here at its smoke size, on a tiny GPT-2 (real GPT-2 BPE tokenizer) pretrained once for the
module, and on about 30k characters of Tiny Shakespeare. Where an exercise's claimed effect is robust even at that
size (frozen blocks train fewer parameters, no task tokens means no task-token ids, a matched LSTM matches) its
direction is checked; elsewhere the run must complete and report finite numbers. The commands printed in the
markdown file are parsed by the scripts' own parsers, so they cannot drift from the flags."""
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chapters import ch04_finetune_vs_scratch as ch04
from chapters.solutions import ch04_data_size, ch04_freeze_blocks, ch04_lr_warmup, ch04_lstm_size
from nanoft.recipes.small_gpt2 import PretrainConfig, pretrain_small_gpt2
from nanoft.data.datasets import dataset_path, read_text
from nanoft.models.gpt2 import GPT2
from nanoft.models.lstm import LSTMConfig, LSTMLM

REPO = Path(__file__).resolve().parents[1]
GPT2_VOCAB = 50257


@pytest.fixture(scope="module")
def ch04_args(tmp_path_factory, shared_data_dir):
    """Offline, a private cache, a toy corpus and a 2-block 16-wide GPT-2 pretrained for 3 steps."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("NANOFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        threads = torch.get_num_threads()
        data = tmp_path_factory.mktemp("data4")
        play = read_text(dataset_path("tiny_shakespeare/input.txt", shared_data_dir).path)
        cut = play.find("\n\n", 30_000)
        (data / "tiny_shakespeare").mkdir()
        (data / "tiny_shakespeare" / "input.txt").write_text(play if cut < 0 else play[:cut + 2])
        wiki = read_text(dataset_path("wikitext-2/wiki.valid.tokens", shared_data_dir).path)[:20_000]
        (data / "wikitext-2").mkdir()
        for name in ("wiki.valid.tokens", "wiki.test.tokens"):
            (data / "wikitext-2" / name).write_text(wiki)
        model = tmp_path_factory.mktemp("gpt2") / "tiny"
        tiny = PretrainConfig.tiny(n_layer=2)
        pretrain_small_gpt2(replace(tiny, train=replace(tiny.train, device="cpu", progress=False)), data, out=model)
        yield ["--smoke", "--data-dir", str(data), "--model", str(model), "--device", "cpu", "--threads", "1",
               "--out-dir", str(tmp_path_factory.mktemp("out"))]
        torch.set_num_threads(threads)


def finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_without_task_tokens_the_vocabulary_and_the_ids_stay_gpt2s(ch04_args, capsys):
    with_tokens = ch04.main(ch04_args)
    capsys.readouterr()
    without = ch04.main(ch04_args + ["--no-task-tokens"])
    out = capsys.readouterr().out
    assert with_tokens["vocab_size"] == GPT2_VOCAB + 2 and with_tokens["task_tokens_in_train"] > 0
    assert without["vocab_size"] == GPT2_VOCAB and without["task_tokens_in_train"] == 0
    assert "Added" not in out
    example = out.split("One example:")[1].split("training ids:")[0]
    assert example.strip() and "[TASK_" not in example
    assert all("[TASK_" not in sample for sample in without["samples"].values())  # none to prompt with, none to stop at
    assert all(math.isfinite(r["ppl"]) for name in ("gpt2", "lstm") for r in without[name])


def test_freezing_all_blocks_but_the_last(ch04_args):
    rows = ch04_freeze_blocks.main(ch04_args + ["--blocks", "all,1,0"])
    gpt2 = GPT2.from_pretrained(ch04_args[ch04_args.index("--model") + 1])
    gpt2.resize_token_embeddings(GPT2_VOCAB + 2)  # the chapter's two task tokens
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())
    last, ln_f = count(gpt2.transformer.h[-1], gpt2.transformer.ln_f), count(gpt2.transformer.ln_f)
    assert [r["trainable"] for r in rows] == [gpt2.num_parameters(), last, ln_f]
    assert all(finite(r["best_ppl"], r["final_ppl"], r["s_per_step"]) for r in rows)


def test_the_size_matched_lstm_matches_gpt2(ch04_args):
    rows = ch04_lstm_size.main(ch04_args + ["--layers", "1,2", "--train"])
    gpt2 = GPT2.from_pretrained(ch04_args[ch04_args.index("--model") + 1])
    target = gpt2.num_parameters() + 2 * gpt2.config.n_embd  # after the two task tokens
    matched = [r for r in rows if r["lstm"] == "matched"]
    assert [r["layers"] for r in matched] == [1, 2]
    for r in matched:
        assert abs(r["params"] / target - 1) < 0.10  # within 10% of GPT-2's count
        real = LSTMLM(LSTMConfig(vocab_size=GPT2_VOCAB + 2, emb_dim=r["width"], hidden_dim=r["width"],
                                 n_layers=r["layers"]))
        assert r["params"] == real.num_parameters()  # the meta-device count is the real model's
    assert finite(matched[1]["lstm_final_ppl"], matched[1]["gpt2_final_ppl"])  # --train trained it


def test_data_size_runs_and_reports(ch04_args):
    rows = ch04_data_size.main(ch04_args + ["--train-tokens", "3000,0"])
    assert [r["train_tokens"] for r in rows] == [3000, "all"]
    assert rows[0]["epochs"] == pytest.approx(4 * 4 * 32 / 3000)  # smoke: 4 steps of 4 x 32 tokens
    assert rows[0]["epochs"] > rows[1]["epochs"]
    assert all(finite(r["gpt2_best"], r["gpt2_final"], r["lstm_best"], r["lstm_final"], r["ratio"]) for r in rows)


def test_lr_and_warmup_runs_and_reports(ch04_args):
    rows = ch04_lr_warmup.main(ch04_args + ["--runs", "1e-3:1,1e-2:0"])
    assert [(r["lr"], r["warmup"]) for r in rows] == [(1e-3, 1), (1e-2, 0)]
    assert all(finite(r["first_ppl"], r["best_ppl"], r["final_ppl"]) for r in rows)


def run_commands(markdown):
    """The `python ...` commands of a markdown file's bash blocks, with their continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split() for line in lines if line.startswith("python ")]


def test_every_exercise_has_its_parts_and_its_commands_parse():
    text = (REPO / "chapters" / "ch04_exercises.md").read_text()
    n = len(re.findall(r"^## \d+\. ", text, flags=re.M))
    assert 4 <= n <= 6
    for part in ("**Question.**", "**Change.**", "**Expect.**", "**Run.**", "**Measured:**"):
        assert text.count(part) == n, part
    commands = run_commands(text)
    assert len(commands) >= n
    for cmd in commands:
        if cmd[1] == "-m":  # a solution: all its flags are its own
            module, rest = __import__(cmd[2], fromlist=["main"]), cmd[3:]
        else:
            module, rest = {"chapters/ch04_finetune_vs_scratch.py": ch04}[cmd[1]], cmd[2:]
        assert module.build_parser().parse_args(rest)  # an unknown or malformed flag exits here
