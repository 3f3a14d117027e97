"""The exercises of chapters 13 and 12 (chapters/ch13_exercises.md, ch12_exercises.md); chapter 4's are in
tests/test_exercises_ch04.py.

Every solution runs here at its smoke size, on a tiny BERT made once for the module (with the real BERT WordPiece
tokenizer), so the whole file takes well under two minutes on a busy CPU. Where an exercise's claimed effect is
robust even at that size (frozen layers train fewer parameters, memorising a tiny training set opens a gap between
training and validation loss, temperature flattens the task mix) its direction is checked; elsewhere the run must
complete and report finite numbers. The commands printed in the markdown file are parsed, so they cannot drift from
the scripts' flags."""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from chapters import ch12_quantized_fine_tuning as ch12
from chapters import ch13_language_understanding as ch13
from chapters.solutions import ch12_codebooks, ch12_merge_speed
from chapters.solutions import ch13_mixing, ch13_overfitting, ch13_pooling, ch13_tapt_epochs, ch13_unfreeze_top_k
from nanoft.models.bert import BERT, BertConfig
from nanoft.recipes.classification import sentence_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data_dir):
    """Offline, a private cache, and torch's thread count restored after the solutions' --threads 1."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("NANOFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        if shared_data_dir is None:
            mp.delenv("NANOFT_DATA", raising=False)
        threads = torch.get_num_threads()
        yield tmp_path_factory.mktemp("out")
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ch13_args(env, tmp_path_factory, shared_data_dir, minilm_dir):
    """Chapter 13 at toy size: a 2-layer, 32-wide BERT (random weights) with MiniLM's real WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("bert") / "tiny"
    torch.manual_seed(0)
    BERT(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=128)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, folder)
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    return ["--smoke", "--model", str(folder), *data, "--device", "cpu", "--threads", "1",
            "--out-dir", str(env / "ch13")]


def finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------------- chapter 13


def test_solutions_use_the_library_not_the_chapter():
    for path in (REPO / "chapters" / "solutions").glob("ch1[23]_*.py"):
        text = path.read_text()
        assert "import ch1" not in text and "from chapters" not in text and "sys.path" not in text, path.name
        assert text.rstrip().endswith('if __name__ == "__main__":\n    run_main(main)') or path.name == "ch13_common.py"


def test_tapt_epochs_runs_and_reports(ch13_args):
    rows = ch13_tapt_epochs.main(ch13_args + ["--tapt-epochs", "0,1", "--seeds", "2"])
    assert [r["tapt_epochs"] for r in rows] == [0, 1]
    assert rows[0]["mlm_steps"] == 0 and rows[1]["mlm_steps"] == 48 // 8  # one pass over 48 sentences in batches of 8
    assert rows[0]["mlm_seconds"] == 0 and rows[1]["mlm_seconds"] > 0 and rows[1]["head_steps"] == 2
    assert rows[0]["mlm_loss_after"] is None and finite(rows[1]["mlm_loss_before"], rows[1]["mlm_loss_after"])
    for r in rows:  # two fine-tuning seeds: a mean and a spread
        assert len(r["dev_accs"]) == 2 and r["dev_acc"] == pytest.approx(sum(r["dev_accs"]) / 2)
        assert finite(r["dev_std"]) and 0 <= r["val_acc"] <= 100 and 0 <= r["dev_acc"] <= 100
    saved = json.loads((Path(ch13_args[-1]) / "exercise_tapt_epochs.json").read_text())
    assert [r["dev_acc"] for r in saved] == [r["dev_acc"] for r in rows]


def test_pooling_runs_both_poolings_full_and_frozen(ch13_args):
    rows = ch13_pooling.main(ch13_args)
    assert [(r["training"].startswith("full"), r["pooling"]) for r in rows] == \
        [(True, "cls"), (True, "mean"), (False, "cls"), (False, "mean")]
    assert [r["lr"] for r in rows] == [1e-4, 1e-4, 1e-3, 1e-3]  # --lr for full fine-tuning, --head-lr when frozen
    assert [r["steps"] for r in rows] == [4, 4, 4, 4]  # smoke: --steps 4, --frozen-steps 4
    assert all(0 <= r["val_acc"] <= 100 and 0 <= r["dev_acc"] <= 100 and finite(r["seconds"]) for r in rows)


def test_unfreezing_the_top_k_layers_trains_exactly_those(ch13_args):
    rows = ch13_unfreeze_top_k.main(ch13_args + ["--k", "0,1,2,full"])
    encoder = BERT.from_pretrained(ch13_args[ch13_args.index("--model") + 1])
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    head = 32 * 2 + 2  # the linear classifier, hidden 32 -> 2 labels
    expected = [head, head + count([encoder.layers[1], encoder.pooler]),
                head + count([*encoder.layers, encoder.pooler]), head + encoder.num_parameters()]
    assert [r["trainable"] for r in rows] == expected  # head only < top 1 < top 2 < everything
    assert [r["lr"] for r in rows] == [1e-3, 1e-4, 1e-4, 1e-4]  # --head-lr for the head alone
    assert all(0 <= r["dev_acc"] <= 100 and finite(r["seconds"]) for r in rows)
    mean = ch13_unfreeze_top_k.main(ch13_args + ["--k", "1", "--pooling", "mean", "--steps", "1"])
    assert mean[0]["trainable"] == head + count([encoder.layers[1]])  # mean pooling never calls the pooler


def test_mixing_temperature_flattens_towards_round_robin(ch13_args):
    rows = ch13_mixing.main(ch13_args)
    assert [r["mix"] for r in rows] == ["temperature:1", "temperature:2", "round_robin"]
    assert rows[0]["sst2_batches"] < rows[0]["squad_batches"]  # the exercise's premise: SST-2 is the small task
    p = [r["p_sst2"] for r in rows]
    assert p[0] < p[1] < p[2] == 0.5  # T=2 gives the small task more than proportional, round-robin half
    assert p[0] == pytest.approx(rows[0]["sst2_batches"] / (rows[0]["sst2_batches"] + rows[0]["squad_batches"]))
    for r in rows:
        assert r["sst2_steps"] + r["squad_steps"] == 6  # smoke: --steps 6 per run, both tasks together
        assert 0 <= r["dev_acc"] <= 100 and 0 <= r["em"] <= r["f1"] + 1e-9 <= 100 + 1e-9
    assert rows[2]["sst2_steps"] == rows[2]["squad_steps"] == 3  # round-robin: turns


def test_no_regularization_on_a_tiny_set_overfits(ch13_args):
    rows = ch13_overfitting.main(ch13_args + ["--lr", "1e-2"])  # a random tiny BERT needs big steps to memorise
    assert [r["setting"] for r in rows] == ["none", "chapter", "strong"]
    assert [(r["dropout"], r["weight_decay"]) for r in rows] == [(0, 0), (0.1, 0.01), (0.3, 0.1)]
    none = rows[0]
    assert [p["step"] for p in none["curve"]] == [6, 12, 18, 24, 30]  # 5 evaluations, no early stopping
    assert none["curve"][-1]["train_loss"] < none["curve"][0]["train_loss"]
    # 16 sentences seen 15 times: the training loss ends far below the validation loss
    assert none["train_loss"] < 0.5 * none["val_loss"]
    assert all(finite(r["train_loss"], r["val_loss"], r["dev_acc"]) for r in rows)
    assert (Path(ch13_args[-1]) / "exercise_overfitting.json").exists()


def test_set_dropout_reaches_every_dropout():
    model = sentence_classifier(BERT(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=32)))
    ch13_overfitting.set_dropout(model, 0.3)
    ps = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(ps) >= 1 + 2 * 2 + 1  # at least: embeddings, attention output and MLP of both layers, the head
    assert set(ps) == {0.3} and {m.attn_dropout for m in model.modules() if hasattr(m, "attn_dropout")} == {0.3}


@pytest.mark.parametrize("module, argv", [(ch13_pooling, ["--steps", "0"]), (ch13_tapt_epochs, ["--tapt-labels", "-1"]),
                                          (ch13_unfreeze_top_k, ["--k", "0,two"]),
                                          (ch13_mixing, ["--mixes", "temperature:0"]),
                                          (ch13_overfitting, ["--strong-dropout", "1.5"]),
                                          (ch13_mixing, ["--smoke", "--stride", "64"])])
def test_solutions_refuse_impossible_flags_in_one_line(module, argv, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    name = module.__name__.split(".")[-1]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"{name}: {argv[-2]}"), err


# ---------------------------------------------------------------------------------------------------- chapter 12


def test_nf4_beats_uniform_int4_and_bigger_blocks_cost_accuracy_on_real_weights(tmp_path):
    rows = ch12_codebooks.main(["--blocks", "32,256", "--out-dir", str(tmp_path)])  # the real all-MiniLM-L6-v2
    err = {(r["codebook"], r["block"]): r["rel_error"] for r in rows}
    bits = {(r["codebook"], r["block"]): r["bits"] for r in rows}
    for block in (32, 256):
        assert err["NF4", block] < 0.95 * err["int4 (uniform)", block]  # measured: 13-26% lower
    for codebook in ("NF4", "int4 (uniform)"):
        assert err[codebook, 32] < err[codebook, 256] and bits[codebook, 32] > bits[codebook, 256]
    assert abs(bits["NF4", 256] - (4 + 8 / 256 + 32 / (256 * 256))) < 1e-3  # codes, 8-bit scales, fp32 second level


def test_merged_lora_gives_the_same_logits(tmp_path):
    rows, diff = ch12_merge_speed.main(["--smoke", "--threads", "1", "--out-dir", str(tmp_path)])
    assert diff < 1e-5 and len(rows) == 2
    assert all(finite(r["unmerged_ms"], r["merged_ms"]) and r["merged_ms"] > 0 for r in rows)  # reported, not judged


# ---------------------------------------------------------------------------------------------------- the text


def run_commands(markdown):
    """The `python ...` commands of a markdown file's bash blocks, with their continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split() for line in lines if line.startswith("python ")]


@pytest.mark.parametrize("chapter", ["ch13", "ch12"])  # chapter 4's: tests/test_exercises_ch04.py
def test_every_exercise_has_its_parts_and_its_commands_parse(chapter):
    text = (REPO / "chapters" / f"{chapter}_exercises.md").read_text()
    n = len(re.findall(r"^## \d+\. ", text, flags=re.M))
    assert 4 <= n <= 6
    for part in ("**Question.**", "**Change.**", "**Expect.**", "**Run.**", "**Measured:**"):
        assert text.count(part) == n, part
    commands = run_commands(text)
    assert len(commands) >= n
    for cmd in commands:
        if cmd[1] == "-m":  # a solution: every flag is its own
            __import__(cmd[2], fromlist=["build_parser"]).build_parser().parse_args(cmd[3:])
        else:  # the chapter script
            {"ch13": ch13, "ch12": ch12}[chapter].parse_args(cmd[2:])
