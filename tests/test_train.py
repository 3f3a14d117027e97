"""The training loop: accumulation, exact resume after a real SIGKILL, early stopping, DDP, the NaN guard, bad input."""
import copy
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nanoft.training.optim import lr_at
from nanoft.training.run_files import load_checkpoint, plot_log, read_log
from nanoft.training.train import TrainConfig, count_tokens, train

sys.path.insert(0, str(Path(__file__).parent))
import _train_worker  # noqa: E402
from _train_worker import TinyNet, tiny_dataset  # noqa: E402

WORKER = str(Path(__file__).parent / "_train_worker.py")
REPO = Path(__file__).resolve().parents[1]


def loss_fn(m, batch):
    return m(batch["input_ids"], batch["y"])


def cfg_for(tmp_path=None, **kw):
    # fp32: most tests compare runs to the last bit (on a CPU with bf16, "auto" would pick bf16 autocast)
    base = dict(lr=1e-2, weight_decay=0.1, max_steps=6, batch_size=4, device="cpu", progress=False, seed=3,
                out_dir=str(tmp_path) if tmp_path else None, log_every=1, precision="fp32")
    return TrainConfig(**{**base, **kw})


def start_worker(*args, torchrun=False):
    # one thread each: workers run side by side on small CI machines (all workers alike, so bitwise checks hold)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    return subprocess.Popen([*launcher, WORKER, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc, expect_rc=0):
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == expect_rc, out


def assert_same_training_state(a: dict, b: dict):
    assert a["step"] == b["step"]
    assert a["data"] == b["data"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


# ----------------------------------------------------------------------------- gradients


def test_accumulation_equals_one_big_batch():
    # 4 micro-batches of 2 == 1 batch of 8, with clipping active (it must see the whole step's gradient)
    torch.manual_seed(0)
    base = TinyNet(dropout=0.0)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ra = train(a, tiny_dataset(), loss_fn, cfg_for(batch_size=8, grad_accum_steps=1, grad_clip=0.05, max_steps=5))
    rb = train(b, tiny_dataset(), loss_fn, cfg_for(batch_size=2, grad_accum_steps=4, grad_clip=0.05, max_steps=5))
    assert any(r["grad_norm"] > 0.05 for r in ra.history)  # clipping did act
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(pa, base.state_dict()[name])  # it trained
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0, msg=name)
    for ha, hb in zip(ra.history, rb.history):
        assert ha["loss"] == pytest.approx(hb["loss"], abs=1e-5)
        # Adam hides a wrongly scaled gradient (m / sqrt(v)); the gradient norm before clipping does not
        assert ha["grad_norm"] == pytest.approx(hb["grad_norm"], rel=1e-5)


def test_steps_count_optimizer_steps_and_lr_follows_schedule():
    calls = []
    model = TinyNet(dropout=0.0)
    cfg = cfg_for(grad_accum_steps=3, batch_size=2, max_steps=7, warmup_steps=3, decay="linear", min_lr_ratio=0.2)
    res = train(model, tiny_dataset(), lambda m, b: calls.append(1) or loss_fn(m, b), cfg)
    assert len(calls) == 7 * 3 and res.step == 7
    assert [r["step"] for r in res.history] == list(range(1, 8))
    # the record of step s carries the lr that step used: lr_at(s - 1) (0-based optimizer step index)
    assert [r["lr"] for r in res.history] == pytest.approx([lr_at(s - 1, cfg) for s in range(1, 8)], abs=1e-12)


def test_epochs_set_max_steps():
    # 40 examples / batch 4 = 10 micro-batches per epoch; accum 2 -> 5 optimizer steps per epoch
    res = train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(max_steps=None, epochs=2, grad_accum_steps=2))
    assert res.step == 10
    assert [r["epoch"] for r in res.history] == [0] * 5 + [1] * 5


def test_same_seed_same_run_other_seed_other_run():
    def run(seed):
        torch.manual_seed(0)
        m = TinyNet(dropout=0.3)
        train(m, tiny_dataset(), loss_fn, cfg_for(seed=seed))
        return torch.cat([p.flatten() for p in m.parameters()])
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ----------------------------------------------------------------------------- resume after SIGKILL


@pytest.mark.parametrize("grouping", [[], ["--group-by-length"]], ids=["plain", "group_by_length"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, grouping):
    full, killed = tmp_path / "full", tmp_path / "killed"
    # accum 2, checkpoint every 3 steps: call 15 is the first micro-batch of step 8; the newest checkpoint is
    # step 6, so the resumed run must redo step 7 with the same batches and the same dropout masks
    runs = start_worker(full, *grouping), start_worker(killed, "--kill-at-call", 15, *grouping)  # side by side
    finish(runs[0])
    finish(runs[1], expect_rc=-9)  # died of SIGKILL
    mid = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert mid["step"] == 6 and mid["data"]["epoch"] == 1  # killed part-way, in the second epoch
    assert mid["data"].get("group_by_length", False) == bool(grouping)
    assert [rec["step"] for rec in read_log(killed / "log.jsonl")] == list(range(1, 8))

    finish(start_worker(killed, "--resume", *grouping))
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert a["step"] == 12
    assert_same_training_state(a, b)
    assert not torch.equal(a["model"]["fc.weight"], mid["model"]["fc.weight"])
    # the log of the resumed run is the log of the uninterrupted one (the redone step 7 is not doubled)
    strip = lambda recs: [{k: v for k, v in rec.items() if k != "tokens_per_s"} for rec in recs]  # noqa: E731
    assert strip(read_log(killed / "log.jsonl")) == strip(read_log(full / "log.jsonl"))
    assert not list(killed.glob("*.tmp"))


class Crash(Exception):
    pass


def crash_at(call):
    calls = []

    def fn(m, batch):
        calls.append(1)
        if len(calls) == call:
            raise Crash()
        return loss_fn(m, batch)
    return fn


@pytest.mark.parametrize("every,crash_call,max_steps,grouped", [
    (2, 4, 6, False),  # dies in step 4, resumes from step 2, mid-epoch
    (5, 12, 14, False),  # resumes from step 10 = the end of epoch 0 (10 batches of 4), at (epoch 0, batch 10)
    (5, 14, 16, True),  # the same with length-grouped batches, into epoch 1
])
def test_resume_in_process_and_without_rng_restore_it_would_differ(tmp_path, monkeypatch, every, crash_call,
                                                                    max_steps, grouped):
    # guards the test above: with dropout, a resume that skipped the RNG restore would end elsewhere
    T = sys.modules["nanoft.training.train"]  # the module; `nanoft.training.train` the attribute is the train() function
    torch.manual_seed(0)
    base = TinyNet(dropout=0.3)
    cfg = cfg_for(max_steps=max_steps, checkpoint_every=every, group_by_length=grouped)
    a = copy.deepcopy(base)
    length = lambda ex: int(ex["input_ids"].sum())  # noqa: E731  (used only when grouped)
    train(a, tiny_dataset(), loss_fn, cfg, length_fn=length)

    def crash_and_resume(out_dir):
        m = copy.deepcopy(base)
        with pytest.raises(Crash):
            train(m, tiny_dataset(), crash_at(crash_call), replace(cfg, out_dir=str(out_dir)), length_fn=length)
        m = copy.deepcopy(base)  # a fresh process would rebuild the model from scratch
        train(m, tiny_dataset(), loss_fn, replace(cfg, out_dir=str(out_dir), resume=True), length_fn=length)
        return m

    b = crash_and_resume(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    monkeypatch.setattr(T, "set_rng_state", lambda *args: None)
    c = crash_and_resume(tmp_path / "c")
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_resume_refuses_another_batch_size(tmp_path):
    train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="batch_size=4 on 1 process"):
        train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(tmp_path, max_steps=4, batch_size=2, resume=True))
    # another seed, shuffle, accumulation or dataset would put other examples at the saved (epoch, batch)
    for change, match in [(dict(seed=4), "seed 3 then, 4 now"), (dict(shuffle=False), "shuffle True then, False now"),
                          (dict(grad_accum_steps=2), "grad_accum_steps 1 then, 2 now"),
                          (dict(group_by_length=True), "group_by_length False then, True now")]:
        with pytest.raises(ValueError, match="other data settings.*" + match):
            train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(tmp_path, max_steps=4, resume=True, **change))
    with pytest.raises(ValueError, match="examples 40 then, 12 now"):
        train(TinyNet(), tiny_dataset()[:12], loss_fn, cfg_for(tmp_path, max_steps=4, resume=True))
    grouped = cfg_for(tmp_path / "g", max_steps=2, group_by_length=True)
    train(TinyNet(), tiny_dataset(), loss_fn, grouped, length_fn=lambda ex: int(ex["input_ids"].sum()))
    with pytest.raises(ValueError, match="lengths_crc"):  # other lengths would group other batches
        train(TinyNet(), tiny_dataset(), loss_fn, replace(grouped, max_steps=4, resume=True),
              length_fn=lambda ex: int(ex["input_ids"].max()))
    res = train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(tmp_path, max_steps=4, resume=True))  # the same: fine
    assert res.step == 4


# ----------------------------------------------------------------------------- evaluation, early stopping


@pytest.mark.parametrize("mode,values,best_eval,stop_eval", [
    ("min", [5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 1.0, 0.5], 4, 6),  # best 3.0 at eval 4; evals 5 and 6 are worse: stop
    ("max", [0.5, 0.7, 0.6, 0.65, 0.9, 0.95], 2, 4),  # best 0.7 at eval 2; 0.6 and 0.65 are worse: stop
])
def test_early_stopping_and_best_checkpoint(tmp_path, mode, values, best_eval, stop_eval):
    model = TinyNet(dropout=0.0)
    snapshots = []

    def eval_fn(m):
        assert not m.training
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": values[len(snapshots) - 1], "other": 1.0}

    cfg = cfg_for(tmp_path, max_steps=100, eval_every=2, metric="score", mode=mode, patience=2)
    res = train(model, tiny_dataset(), loss_fn, cfg, eval_fn=eval_fn)
    assert model.training  # back in train mode after evaluating
    assert len(snapshots) == stop_eval and res.stopped_early and res.step == 2 * stop_eval
    assert res.best_step == 2 * best_eval and res.best_metric == values[best_eval - 1]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 2 * best_eval and best["metrics"]["score"] == values[best_eval - 1]
    for k, v in best["model"].items():
        assert torch.equal(v, snapshots[best_eval - 1][k]), k
    last = load_checkpoint(tmp_path / "checkpoint.pt")
    assert last["step"] == 2 * stop_eval
    evals = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "eval"]
    assert [r["score"] for r in evals] == values[:stop_eval]


def test_checkpoint_every_minus_one_keeps_only_best(tmp_path):
    # chapters that never resume skip the (weights + AdamW moments) resume file but still keep best.pt
    cfg = cfg_for(tmp_path, max_steps=4, eval_every=2, checkpoint_every=-1)
    train(TinyNet(dropout=0.0), tiny_dataset(), loss_fn, cfg, eval_fn=lambda m: {"val_loss": 1.0})
    assert (tmp_path / "best.pt").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_eval_fn_must_return_the_metric():
    with pytest.raises(KeyError, match="cfg.metric is 'val_loss'"):
        train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(eval_every=2), eval_fn=lambda m: {"acc": 1.0})


# ----------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--dropout", 0, "--max-steps", 6]
    ddp = start_worker(two, "--batch-size", 4, *args, torchrun=True)  # 2 processes x 4 = a global batch of 8
    _train_worker.main([str(one), "--batch-size", "8", *map(str, args)])  # meanwhile, 1 process x 8, here
    finish(ddp)
    a = torch.load(one / "checkpoint.pt", weights_only=True)
    b = torch.load(two / "checkpoint.pt", weights_only=True)
    assert b["data"]["world_size"] == 2 and a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=0, msg=k)
    # the logged loss is the mean over both processes, i.e. the 1-process loss
    la, lb = read_log(one / "log.jsonl"), read_log(two / "log.jsonl")
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-5)
    assert not (two / "checkpoint.pt.tmp").exists()


# ----------------------------------------------------------------------------- bad input, NaN


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, bad):
    model = TinyNet(dropout=0.0)
    calls = []

    def flaky(m, batch):
        calls.append(1)
        loss = loss_fn(m, batch)
        return loss * bad if len(calls) == 5 else loss  # step 5's loss

    with pytest.raises(FloatingPointError, match=rf"loss is {bad} at step 5.*checkpoint.pt \(step 4\)"):
        train(model, tiny_dataset(), flaky, cfg_for(tmp_path, max_steps=10, checkpoint_every=2))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 4
    for name, p in model.state_dict().items():  # the bad step never reached the weights
        assert torch.isfinite(p).all() and torch.equal(p, ckpt["model"][name]), name


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_runs_keep_freed_memory_unless_told_not_to(monkeypatch, keep):
    calls = []
    monkeypatch.setattr(sys.modules["nanoft.training.device"], "keep_freed_memory", lambda: calls.append(1))
    train(TinyNet(), tiny_dataset(8), loss_fn, cfg_for(max_steps=1, keep_freed_memory=keep))
    assert calls == ([1] if keep else [])


def test_empty_dataset_and_oversized_batch_fail_before_training():
    def never(m, b):
        raise AssertionError("training started")
    with pytest.raises(ValueError, match="train_data is empty"):
        train(TinyNet(), [], never, cfg_for())
    with pytest.raises(ValueError, match="batch_size 64 is larger than the dataset \\(40 examples"):
        train(TinyNet(), tiny_dataset(), never, cfg_for(batch_size=64))
    with pytest.raises(ValueError, match="max_steps or epochs"):
        train(TinyNet(), tiny_dataset(), never, cfg_for(max_steps=None))
    with pytest.raises(TypeError, match="map-style dataset"):
        train(TinyNet(), iter(tiny_dataset()), never, cfg_for())


# ----------------------------------------------------------------------------- precision, checkpointing


def test_precision_autocast_on_cpu(monkeypatch, capsys):
    D = sys.modules["nanoft.training.device"]
    seen = []

    def probe(m, b):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return loss_fn(m, b)
    # "auto" follows the CPU's bf16 check, mocked both ways (this machine's answer must not decide the test)
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (False, "mocked: no bf16"))
    train(TinyNet(), tiny_dataset(), probe, cfg_for(max_steps=1, precision="auto", progress=True))
    assert seen[0][0] is False
    assert "precision auto -> fp32: mocked: no bf16" in capsys.readouterr().out
    seen.clear()
    monkeypatch.setattr(D, "cpu_bf16_support", lambda: (True, "mocked: bf16"))
    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(model, tiny_dataset(), probe, cfg_for(max_steps=2, precision="auto", progress=True))
    assert seen[0] == (True, torch.bfloat16) and res.history[-1]["loss"] > 0
    out = capsys.readouterr().out
    assert "precision auto -> bf16 autocast: mocked: bf16" in out
    # a bf16 step moves every weight, and the weights stay fp32: autocast, not a bf16 model
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and not torch.equal(v, before[k]), k
    # the forward really ran in bf16: its losses are close to fp32's, not equal (bf16 keeps 8 bits of mantissa)
    fp32 = TinyNet(dropout=0.0)
    fp32.load_state_dict(before)
    ref = train(fp32, tiny_dataset(), loss_fn, cfg_for(max_steps=2, precision="fp32"))
    for r, q in zip(res.history, ref.history):
        assert r["loss"] != q["loss"] and r["loss"] == pytest.approx(q["loss"], rel=2e-2)
    # said once per process: a second run with the same answer prints nothing about precision
    train(TinyNet(), tiny_dataset(), probe, cfg_for(max_steps=1, precision="auto", progress=True))
    assert "precision auto" not in capsys.readouterr().out
    res = train(TinyNet(), tiny_dataset(), probe, cfg_for(max_steps=2, precision="bf16"))
    with pytest.raises(ValueError, match="fp16' needs a CUDA GPU"):
        train(TinyNet(), tiny_dataset(), probe, cfg_for(precision="fp16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_scaler_and_fused_adamw(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    seen = []

    def probe(m, b):
        seen.append((b["input_ids"].device.type, torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda")))
        return loss_fn(m, b)
    model = TinyNet()
    res = train(model, tiny_dataset(), probe, cfg_for(tmp_path, device="cuda", precision=precision, max_steps=4))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    assert seen[0] == ("cuda", dtype, True) and res.step == 4
    assert next(model.parameters()).dtype == torch.float32  # autocast, not a half-precision model
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True
    assert bool(ckpt["scaler"]) == (precision == "fp16")  # the GradScaler is on for fp16 only
    assert all(r["loss"] > 0 for r in res.history)


def lm_data(vocab=40, n=16, T=8):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (n, T + 1), generator=g)
    return [{"input_ids": ids[i, :-1], "labels": ids[i, 1:]} for i in range(n)]


def test_gradient_checkpointing_flag_gpt2_same_result():
    from nanoft.models.gpt2 import GPT2, GPT2Config
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base = GPT2(cfg)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    gpt_loss = lambda m, batch: m(batch["input_ids"], targets=batch["labels"])[1]  # noqa: E731
    train(a, lm_data(), gpt_loss, cfg_for(max_steps=3))
    train(b, lm_data(), gpt_loss, cfg_for(max_steps=3, gradient_checkpointing=True))
    assert b.gradient_checkpointing and not a.gradient_checkpointing
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


def test_gradient_checkpointing_flag_bert_and_error():
    from nanoft.models.bert import BertConfig, BertForMaskedLM
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16))
    mlm_loss = lambda m, batch: m(batch["input_ids"], labels=batch["labels"])[1]  # noqa: E731
    train(model, lm_data(), mlm_loss, cfg_for(max_steps=1, gradient_checkpointing=True))
    assert model.bert.gradient_checkpointing
    with pytest.raises(ValueError, match="has no module with a `gradient_checkpointing` attribute"):
        train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(gradient_checkpointing=True))


# ----------------------------------------------------------------------------- logs


def test_log_records_tokens_and_plot(tmp_path):
    res = train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(tmp_path, max_steps=6, log_every=2, eval_every=3),
                eval_fn=lambda m: {"val_loss": 1.5})
    records = read_log(tmp_path / "log.jsonl")
    assert records == res.history
    assert [(r["type"], r["step"]) for r in records] == [("train", 2), ("eval", 3), ("train", 4), ("train", 6),
                                                         ("eval", 6)]
    train_recs = [r for r in records if r["type"] == "train"]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 and r["loss"] > 0 for r in train_recs)
    png = plot_log(str(tmp_path / "log.jsonl"))
    try:
        import matplotlib  # noqa: F401  (optional: requirements-dev.txt installs it, nanoft never needs it)
    except ImportError:
        assert png is None  # no plot, and no crash, without matplotlib
    else:
        assert png and Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_count_tokens_counts_non_pad():
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])
    assert count_tokens({"input_ids": ids, "attention_mask": (ids != 0).long()}) == 4
    assert count_tokens({"input_ids": ids}) == 8
    assert count_tokens({"input_ids": ids, "num_tokens": torch.tensor([3, 1])}) == 4


# ----------------------------------------------------------------------------- restore_best, what a run prints


@pytest.mark.parametrize("with_out_dir", [True, False])
def test_restore_best_ends_with_the_best_evaluations_weights(tmp_path, with_out_dir):
    # the metric is best at the 2nd of 4 evaluations: the model must end with the weights it had then,
    # from best.pt with an out_dir and from the in-memory copy without one
    snapshots, values = [], [3.0, 1.0, 2.0, 2.5]

    def eval_fn(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_loss": values[len(snapshots) - 1]}

    cfg = cfg_for(tmp_path if with_out_dir else None, max_steps=8, eval_every=2, restore_best=True)
    model = TinyNet(dropout=0.0)
    res = train(model, tiny_dataset(), loss_fn, cfg, eval_fn=eval_fn)
    assert res.best_step == 4 and len(snapshots) == 4
    assert not torch.equal(snapshots[1]["fc.weight"], snapshots[3]["fc.weight"])  # the last weights differ
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k
    # restore_best=False (the default) keeps the last step's weights
    snapshots.clear()
    model = TinyNet(dropout=0.0)
    train(model, tiny_dataset(), loss_fn, replace(cfg, restore_best=False, out_dir=None), eval_fn=eval_fn)
    assert torch.equal(model.state_dict()["fc.weight"], snapshots[3]["fc.weight"])


def test_parameter_groups_print_only_when_verbose(capsys):
    train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(max_steps=1, progress=True, precision="fp32"))
    assert "weight_decay=" not in capsys.readouterr().out
    train(TinyNet(), tiny_dataset(), loss_fn, cfg_for(max_steps=1, progress=True, precision="fp32", verbose=True))
    out = capsys.readouterr().out
    assert "matrices get weight decay" in out and "weight_decay=0.1: 2 tensors" in out


# ----------------------------------------------------------------------------- length-grouped batches


def varied_lengths(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 61, (n,), generator=g).tolist()  # SST-2-like: 2 to 60 tokens


def padding_share(batches, lengths):
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def test_grouped_batches_cover_each_example_once_and_cut_padding():
    from nanoft.training.train import grouped_batches
    lengths = varied_lengths(1600)
    a = grouped_batches(lengths, 16, epoch=0, seed=1)
    assert len(a) == 100 and all(len(b) == 16 for b in a)
    assert sorted(i for b in a for i in b) == list(range(1600))  # every example exactly once
    assert grouped_batches(lengths, 16, epoch=0, seed=1) == a  # (seed, epoch) decides: resume can rebuild it
    b = grouped_batches(lengths, 16, epoch=1, seed=1)
    assert b != a and sorted(i for x in b for i in x) == list(range(1600))
    random_batches = [list(range(i, i + 16)) for i in range(0, 1600, 16)]  # the lengths are random already
    assert padding_share(random_batches, lengths) > 0.4 and padding_share(a, lengths) < 0.1
    # the batches are shuffled after grouping: not one long-to-short run per pool
    firsts = [lengths[x[0]] for x in a[:25]]
    assert firsts != sorted(firsts, reverse=True)
    # a ragged tail is left out, a random one: 1605 examples still give 100 batches, different leftovers
    tails = [set(range(1605)) - {i for x in grouped_batches(varied_lengths(1605), 16, e, 1) for i in x}
             for e in (0, 1)]
    assert len(tails[0]) == len(tails[1]) == 5 and tails[0] != tails[1]


def test_group_by_length_training_sees_every_example_once_per_epoch():
    data = [{**ex, "idx": i} for i, ex in enumerate(tiny_dataset())]
    lengths = [int(ex["input_ids"].sum()) for ex in data]  # all have 6 ids: a made-up length to sort by
    seen = []

    def loss(m, batch):
        seen.append(batch["idx"].tolist())
        return loss_fn(m, batch)
    # 40 examples / batch 4 = 10 batches per epoch, 3 epochs
    train(TinyNet(), data, loss, cfg_for(max_steps=None, epochs=3, group_by_length=True),
          length_fn=lambda ex: int(ex["input_ids"].sum()))
    assert len(seen) == 30
    epochs = [sum(seen[e * 10:(e + 1) * 10], []) for e in range(3)]
    assert all(sorted(ep) == list(range(40)) for ep in epochs)
    assert epochs[0] != epochs[1]  # another order each epoch
    from nanoft.training.train import grouped_batches
    assert seen[:10] == grouped_batches(lengths, 4, epoch=0, seed=3)  # the loop follows the grouped plan
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)  # noqa
    plain_seen = []
    train(TinyNet(), data, lambda m, b: plain_seen.append(b["idx"].tolist()) or loss_fn(m, b),
          cfg_for(max_steps=10))
    # grouped batches hold neighbours in length (40 examples make pools of only 2 batches, so the gain is small)
    assert spread(seen[:10]) < 0.8 * spread(plain_seen)


def test_group_by_length_two_processes_share_each_global_batch():
    # what _micro_batches gives each of 2 processes is the 1-process batch of twice the size, split in two
    T = sys.modules["nanoft.training.train"]
    data, lengths = tiny_dataset(), [int(ex["input_ids"].sum()) for ex in tiny_dataset()]
    cfg = cfg_for(group_by_length=True, batch_size=4)
    ids = lambda b: b["input_ids"]  # noqa: E731
    one = T._micro_batches(data, replace(cfg, batch_size=8), 0, 1, None, 0, 0, torch.device("cpu"), lengths)
    two = [T._micro_batches(data, cfg, r, 2, None, 0, 0, torch.device("cpu"), lengths) for r in (0, 1)]
    for _ in range(5):  # one epoch: 40 / 8
        big = ids(next(one)[2])
        parts = [ids(next(two[r])[2]) for r in (0, 1)]
        assert sorted(map(tuple, big.tolist())) == sorted(map(tuple, torch.cat(parts).tolist()))


def test_group_by_length_needs_a_length():
    with pytest.raises(KeyError, match="length_fn"):
        train(TinyNet(), [{"x": torch.zeros(6, dtype=torch.long), "y": torch.tensor(0)}] * 8, loss_fn,
              cfg_for(group_by_length=True))
