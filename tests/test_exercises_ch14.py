"""The exercises of chapter 14 (chapters/ch14_exercises.md).

Every solution runs here at its smoke size on a tiny Llama made once for the module (2 layers, width 64, random
weights) saved as a Hugging Face folder with SmolLM2's real tokenizer and chat template, so the whole file takes
seconds. Where an exercise's claimed effect is robust even at that size (the prompt's tokens are labelled only when
asked, the trainable parameters grow with the rank and QLoRA's base is smaller, DPO starts at log 2, the restyled
test answers grow likelier) its direction is checked; elsewhere the run must complete and report finite numbers.
The commands printed in the markdown file are parsed, so they cannot drift from the scripts' flags."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from chapters.solutions import ch14_dpo_beta, ch14_dpo_mean, ch14_lora_rank, ch14_new_style, ch14_prompt_loss
from nanoft import Llama, LlamaConfig, load_tokenizer, smollm2_gguf

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = (ch14_prompt_loss, ch14_dpo_beta, ch14_lora_rank, ch14_new_style, ch14_dpo_mean)


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
def tiny_llama(tmp_path_factory):
    """A 2-layer, 64-wide Llama (random weights) with SmolLM2's real tokenizer, as a Hugging Face folder: the
    tokenizer as transformers reads it from the GGUF file and saves it (tokenizer.json, the chat template)."""
    import transformers
    folder = tmp_path_factory.mktemp("llama") / "tiny"
    gguf = Path(smollm2_gguf())
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    tok = load_tokenizer(folder)
    torch.manual_seed(0)
    Llama(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).save_pretrained(folder)
    assert tok.eos_token_id == 2 and "<|im_start|>assistant\n" in tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True)  # ChatML: what the solutions render with
    return folder


@pytest.fixture(scope="module")
def ch14_args(env, tiny_llama, shared_data_dir):
    data = ["--data-dir", str(shared_data_dir)] if shared_data_dir else []
    return ["--smoke", "--model", str(tiny_llama), *data, "--device", "cpu", "--threads", "1",
            "--out-dir", str(env / "ch14")]


def finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_solutions_use_the_library_not_the_chapter():
    for path in (REPO / "chapters" / "solutions").glob("ch14_*.py"):
        text = path.read_text()
        assert "import ch14" not in text and "from chapters" not in text and "sys.path" not in text, path.name
        assert text.rstrip().endswith('if __name__ == "__main__":\n    run_main(main)') or path.name == "ch14_common.py"


def test_prompt_loss_labels_the_prompt_only_when_asked(ch14_args):
    rows = ch14_prompt_loss.main(ch14_args)
    assert [r["mask_prompt"] for r in rows] == [True, False]
    assert rows[1]["labelled_tokens"] > 2 * rows[0]["labelled_tokens"]  # the system prompt and the question, too
    for r in rows:
        assert finite(r["test_ppl"], r["rouge"], r["seconds"]) and r["test_ppl"] > 1
        assert 0 <= r["stopped"] <= 100 and 0 < r["length"] <= 8  # smoke: at most 8 new tokens
    saved = json.loads((Path(ch14_args[-1]) / "exercise_prompt_loss.json").read_text())
    assert [r["test_ppl"] for r in saved] == [r["test_ppl"] for r in rows]


def test_dpo_beta_starts_at_log_2_and_shares_the_sft_adapter(ch14_args, capsys):
    rows = ch14_dpo_beta.main(ch14_args + ["--betas", "0.1,0.5"])
    assert [r["model"] for r in rows] == ["SFT", "DPO beta 0.1", "DPO beta 0.5"]
    for r in rows[1:]:
        assert r["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the first step
        assert 0 <= r["reward_acc"] <= 100 and finite(r["chosen_ppl"], r["d_chosen"], r["d_rejected"])
    adapter = Path(ch14_args[-1]) / "exercise_sft_adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "made_by.json").is_file()
    capsys.readouterr()
    again = ch14_dpo_beta.main(ch14_args + ["--betas", "0.1"])  # the same SFT flags: the adapter is loaded
    assert "SFT adapter loaded" in capsys.readouterr().out
    assert again[0]["pref_acc"] == rows[0]["pref_acc"]
    assert again[0]["chosen_ppl"] == pytest.approx(rows[0]["chosen_ppl"])


def test_lora_rank_counts_and_qlora_bytes(ch14_args):
    rows = ch14_lora_rank.main(ch14_args + ["--settings", "lora:4,lora:16,qlora:16"])
    base, r4, r16, q16 = rows
    assert base["trainable"] == 0 and r16["trainable"] == 4 * r4["trainable"] == q16["trainable"]
    # r x (in + out) summed over the seven projections of each block: q 64+64, k 64+32, v 64+32, o 64+64,
    # gate and up 64+128, down 128+64 (4 heads of 16, 2 kv heads)
    assert r4["trainable"] == 2 * 4 * (128 + 96 + 96 + 128 + 3 * 192)
    assert q16["mbytes"] < r16["mbytes"] and r4["mbytes"] < r16["mbytes"]  # NF4 blocks; the adapters' own bytes
    assert all(finite(r["test_ppl"], r["s_per_step"]) and r["s_per_step"] > 0 for r in rows[1:])


def test_new_style_is_learned(ch14_args):
    rows = ch14_new_style.main(ch14_args + ["--sft-steps", "4", "--lr", "1e-2"])
    base, tuned = rows
    assert [r["model"] for r in rows] == ["base", "SFT on the new style"] and base["seconds"] == 0
    assert tuned["styled_ppl"] < 0.95 * base["styled_ppl"]  # the restyled test answers became likelier
    assert all(0 <= r["starts"] <= 100 and 0 <= r["both"] <= r["ends"] <= 100 and finite(r["rouge"]) for r in rows)
    assert ch14_new_style.restyle({"output": " Paris. "}, "Answer:", "End.")["output"] == "Answer: Paris.\n\nEnd."


def test_dpo_mean_runs_both_losses(ch14_args):
    rows = ch14_dpo_mean.main(ch14_args)
    assert [(r["model"], r["beta"]) for r in rows] == [("SFT", None), ("DPO, summed log-probs", 0.1),
                                                       ("DPO, mean log-probs", 1.5)]
    for r in rows[1:]:
        assert r["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert finite(r["reward_acc"], r["pref_acc"], r["chosen_ppl"], r["length"])


@pytest.mark.parametrize("module, argv", [(ch14_prompt_loss, ["--sft-steps", "0"]),
                                          (ch14_dpo_beta, ["--betas", "0.1,-1"]),
                                          (ch14_lora_rank, ["--settings", "lora:4,dora:8"]),
                                          (ch14_new_style, ["--prefix", " "]),
                                          (ch14_dpo_mean, ["--mean-beta", "0"])])
def test_solutions_refuse_impossible_flags_in_one_line(module, argv, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    name = module.__name__.split(".")[-1]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"{name}: {argv[-2]}"), err


def run_commands(markdown):
    """The `python ...` commands of a markdown file's bash blocks, with their continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split() for line in lines if line.startswith("python ")]


def test_every_exercise_has_its_parts_and_its_commands_parse():
    text = (REPO / "chapters" / "ch14_exercises.md").read_text()
    n = len(re.findall(r"^## \d+\. ", text, flags=re.M))
    assert n == 5
    for part in ("**Question.**", "**Change.**", "**Expect.**", "**Run.**", "**Measured:**"):
        assert text.count(part) == n, part
    commands = run_commands(text)
    assert len(commands) >= n
    for cmd in commands:
        assert cmd[1] == "-m" and cmd[2].startswith("chapters.solutions.ch14_"), cmd  # solutions only
        __import__(cmd[2], fromlist=["build_parser"]).build_parser().parse_args(cmd[3:])
