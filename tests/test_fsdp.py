"""FSDP2 in the training loop (TrainConfig(parallel="fsdp")): 2 processes on gloo against 1, with LoRA and QLoRA,
exact resume after a SIGKILL, and a sharded checkpoint exported to transformers and PEFT."""
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from nanoft.quant.lora import merge_and_unload, save_adapter
from nanoft.training.fsdp import load_sharded_weights, shard_model, transformer_blocks
from nanoft.training.run_files import read_log
from nanoft.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
import _fsdp_worker  # noqa: E402
from _fsdp_worker import launch, sft_dataset, tiny_lm  # noqa: E402


def one_process(out, *args):
    """The reference: the plain loop in this process, 1 x 4 examples x 2 micro-batches a step, on one thread as each
    of the 2 processes (on a busy 2-core machine, 2 threads that wait on each other are slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fsdp_worker.main([str(out), "--parallel", "ddp", "--batch-size", "4", *map(str, args)])
    finally:
        torch.set_num_threads(threads)
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"] if (out / "checkpoint.pt").exists() else None


def two_processes(out, *args, check=True):
    """FSDP2 on 2 processes, 2 x 2 examples x 2 micro-batches a step: the same global batch of 8."""
    codes = launch([str(out), "--batch-size", "2", *map(str, args)])
    assert codes == [0, 0] or not check, codes
    return codes


# full fine-tuning also evaluates and restores the best; LoRA takes the SFT recipe's summed loss (loss_sum=True);
# QLoRA recomputes the blocks in backward (gradient checkpointing: FSDP2 gathers each block's weights again)
EXTRA = {"none": ["--eval-every", 5], "lora": ["--loss-sum"], "qlora": ["--gradient-checkpointing"]}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The 2-process runs, once each for the tests below: adapters -> out_dir."""
    runs = {}

    def get(adapters):
        if adapters not in runs:
            runs[adapters] = tmp_path_factory.mktemp(f"fsdp_{adapters}")
            two_processes(runs[adapters], "--adapters", adapters, *EXTRA[adapters])
        return runs[adapters]
    return get


@pytest.mark.parametrize("adapters", ["none", "lora", "qlora"])
def test_fsdp_two_processes_equal_one_process(tmp_path, fsdp_run, adapters):
    two = fsdp_run(adapters)
    ref = one_process(tmp_path, "--adapters", adapters, *EXTRA[adapters])
    # the same loss at each of the 20 steps (the logged loss is the mean over both processes)
    la, lb = read_log(tmp_path / "log.jsonl"), read_log(two / "log.jsonl")
    train_a, train_b = ([r for r in log if r["type"] == "train"] for log in (la, lb))
    assert [r["step"] for r in train_b] == list(range(1, 21))
    assert [r["loss"] for r in train_b] == pytest.approx([r["loss"] for r in train_a], abs=1e-5)
    assert train_a[-1]["loss"] < train_a[0]["loss"] - 0.1  # it learnt something, so equal losses mean something
    # the same final weights: the sharded checkpoint, gathered into a plain model in this process
    got = load_sharded_weights(tiny_lm(adapters), two / "checkpoint").state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0, msg=k)
    init = tiny_lm(adapters).state_dict()
    moved = {k for k in ref if not torch.equal(ref[k], init[k])}
    if adapters == "none":
        assert moved == set(ref)
        # sharded: each weight and each AdamW moment was written as two halves, one by each process
        meta = FileSystemReader(str(two / "checkpoint")).read_metadata().state_dict_metadata
        halves = {k: [c.sizes[0] for c in m.chunks] for k, m in meta.items()
                  if k.startswith("model.") or k.endswith((".exp_avg", ".exp_avg_sq"))}
        assert len(halves) == 3 * len(ref)  # (DCP names the tied head and its moments under both names)
        assert all(sizes == [meta[k].size[0] // 2] * 2 for k, sizes in halves.items()), halves
        # evaluations (every process runs eval_fn on the sharded model), best.pt and restore_best as in 1 process
        evals_a, evals_b = ([r for r in log if r["type"] == "eval"] for log in (la, lb))
        assert [r["step"] for r in evals_b] == [5, 10, 15, 20]
        assert [r["val_loss"] for r in evals_b] == pytest.approx([r["val_loss"] for r in evals_a], abs=1e-5)
        best_a, best_b = (torch.load(d / "best.pt", weights_only=True) for d in (tmp_path, two))
        assert best_a["step"] == best_b["step"] == 5  # mode="max": the first evaluation stays the best
        final_a, final_b = (torch.load(d / "final.pt", weights_only=True) for d in (tmp_path, two))
        for k in ref:
            torch.testing.assert_close(best_b["model"][k], best_a["model"][k], atol=1e-5, rtol=0, msg=k)
            assert torch.equal(final_b[k], best_b["model"][k]), k  # train() ended with step 5's weights
            assert torch.equal(final_a[k], best_a["model"][k]), k
    else:
        assert moved and all(".lora_" in k for k in moved)  # only the adapters trained; the (NF4) base did not
    assert not (two / "checkpoint.tmp").exists() and not (two / "checkpoint.old").exists()


def test_fsdp_sigkill_then_resume_is_bitwise_identical(tmp_path, fsdp_run):
    uninterrupted = fsdp_run("none")
    killed = tmp_path / "killed"
    # rank 1 kills itself in the 19th loss call, the first micro-batch of step 10; the last checkpoint is step 8
    args = ["--checkpoint-every", 4, *EXTRA["none"]]
    codes = two_processes(killed, *args, "--kill-at-call", 19, check=False)
    assert codes[1] == -9 and codes[0] != 0, codes  # rank 0 then fails in its next collective or is killed
    assert torch.load(killed / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 8
    two_processes(killed, *args, "--resume")
    # every tensor of the final checkpoints (weights, both AdamW moments and their step counts), to the last bit
    dcp_to_torch_save(uninterrupted / "checkpoint", tmp_path / "a.pt")
    dcp_to_torch_save(killed / "checkpoint", tmp_path / "b.pt")
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys() and any(".exp_avg_sq" in k for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    la, lb = read_log(uninterrupted / "log.jsonl"), read_log(killed / "log.jsonl")
    untimed = [[{k: v for k, v in r.items() if k != "tokens_per_s"} for r in log] for log in (la, lb)]
    assert untimed[0] == untimed[1]  # every logged loss, gradient norm and evaluation too


def _tensors(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _tensors(v, f"{prefix}{k}.")
        elif torch.is_tensor(v):
            yield prefix + str(k), v


def test_fsdp_bf16_mixed_precision_tracks_one_process_autocast(tmp_path):
    # bf16: FSDP2 gathers the weights in bf16 and reduce-scatters fp32 gradients (MixedPrecisionPolicy); one
    # process autocasts fp32 weights. Both round the same products to bf16, so the losses agree to bf16's precision
    one_process(tmp_path / "one", "--precision", "bf16")
    two_processes(tmp_path / "two", "--precision", "bf16")
    la, lb = (read_log(tmp_path / d / "log.jsonl") for d in ("one", "two"))
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], abs=5e-3)
    assert la[-1]["loss"] < la[0]["loss"] - 1.0


def test_sharded_checkpoint_exports_to_transformers_and_peft(tmp_path, fsdp_run):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ids = torch.randint(0, _fsdp_worker.VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))

    # full fine-tuning: one Hugging Face folder
    model = load_sharded_weights(tiny_lm(), fsdp_run("none") / "checkpoint").eval()
    model.save_pretrained(tmp_path / "full")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "full").eval()
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
        assert not torch.allclose(ours, tiny_lm().eval()(ids)[0], atol=1e-2)  # trained weights, not the initial ones
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # LoRA: a PEFT adapter folder over the base, and the merged model as one Hugging Face folder
    model = load_sharded_weights(tiny_lm("lora"), fsdp_run("lora") / "checkpoint").eval()
    save_adapter(model, tmp_path / "adapter")
    tiny_lm().save_pretrained(tmp_path / "base")  # the frozen base: the weights the run started from
    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours = model(ids)[0]
        torch.testing.assert_close(peft_model(ids).logits, ours, atol=1e-5, rtol=0)
        merge_and_unload(model).save_pretrained(tmp_path / "merged")
        merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(ids).logits, ours, atol=1e-5, rtol=0)


def test_fsdp_on_one_process_is_the_plain_loop_with_a_sharded_checkpoint(tmp_path):
    plain = one_process(tmp_path / "plain", "--max-steps", 6)
    one_process(tmp_path / "fsdp", "--max-steps", 6, "--parallel", "fsdp")  # (the later --parallel wins)
    assert not (tmp_path / "fsdp" / "checkpoint.pt").exists()
    got = load_sharded_weights(tiny_lm(), tmp_path / "fsdp" / "checkpoint").state_dict()
    assert all(torch.equal(got[k], plain[k]) for k in plain)
    # resume reads the folder's train_state: another batch size is refused, as for checkpoint.pt
    with pytest.raises(ValueError, match="written with batch_size=4 on 1 process"):
        one_process(tmp_path / "fsdp", "--max-steps", 6, "--parallel", "fsdp", "--resume", "--batch-size", 2)


def test_fsdp_shards_the_blocks_then_the_root_and_refuses_what_it_cannot(monkeypatch):
    model = tiny_lm()
    assert transformer_blocks(model) == list(model.model.layers)
    with pytest.raises(ValueError, match="fp16"):
        shard_model(model, torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="no transformer blocks in Linear"):
        shard_model(torch.nn.Linear(2, 2), torch.device("cpu"))
    with pytest.raises(ValueError, match="parallel='zero3'"):
        train(model, sft_dataset(), lambda m, b: m(b["input_ids"], targets=b["labels"])[1],
              TrainConfig(max_steps=1, parallel="zero3", device="cpu", progress=False))
