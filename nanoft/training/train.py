"""The one training loop every chapter uses, in plain PyTorch.

    cfg = TrainConfig(lr=5e-5, batch_size=16, max_steps=1000, warmup_steps=100, eval_every=100, out_dir="runs/x")
    result = train(model, train_dataset, lambda m, b: m(b["input_ids"], targets=b["labels"])[1], cfg,
                   eval_fn=evaluate)

One optimizer step = grad_accum_steps micro-batches of batch_size examples on each process, then
clip, AdamW, schedule. Every eval_every steps eval_fn(model) returns metrics; cfg.metric drives the
best checkpoint and early stopping. Under `torchrun --nproc_per_node=N` the same code runs with
DistributedDataParallel; a plain `python` run is simply world size 1.

Resume is exact: a checkpoint holds everything the next step depends on (weights, AdamW moments,
schedule step, the RNG states that drive dropout, and the position in the data), so a killed run that
resumes from it retraces the same numbers as a run that never stopped (with num_workers=0; DataLoader
workers draw a random collate_fn's masks from streams of their own, which restart at a resume).

Around the loop: nanoft/training/optim.py builds AdamW and the schedule, nanoft/training/device.py picks the device,
precision and processes, nanoft/training/run_files.py writes and reads the checkpoints and the log.
"""
import math
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from nanoft.training import fsdp
from nanoft.training.device import Hardware, gather, resolve_precision, setup_hardware, to_device
from nanoft.training.optim import build_optimizer, build_scheduler, describe_groups
from nanoft.training.run_files import RunLog, load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state


@dataclass
class TrainConfig:
    # optimisation (see nanoft/training/optim.py)
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    max_steps: Optional[int] = None  # optimizer steps; None: epochs * steps per epoch
    epochs: Optional[int] = None  # passes over the data; with max_steps too, whichever ends first
    decay: str = "cosine"  # "linear" | "cosine", after warmup
    min_lr_ratio: float = 0.0  # the decay ends at min_lr_ratio * lr
    # batches: global batch = batch_size * grad_accum_steps * number of processes
    batch_size: int = 8  # examples per micro-batch, per process
    grad_accum_steps: int = 1
    # True: loss_fn returns a SUM over the tokens that count_tokens(batch) counts (e.g. batch["num_tokens"] response
    # tokens), and the step's loss is the sum over all its micro-batches and processes divided by their total count:
    # accumulation then equals one large batch even when micro-batches hold different numbers of tokens
    loss_sum: bool = False
    grad_clip: Optional[float] = 1.0  # max global gradient norm; None or 0: no clipping
    shuffle: bool = True
    # batches of similar lengths, so less of each is padding: sort by length inside random pools of up to
    # 50 batches, then shuffle the batches (transformers' group_by_length). Lengths: train(length_fn=...)
    group_by_length: bool = False
    num_workers: int = 0
    # hardware
    device: str = "auto"  # "auto": cuda if available, else cpu
    # "auto": bf16 autocast on a GPU with bf16 (else fp16) and on a CPU with native bf16 (AVX512-BF16, AMX,
    # ARM BF16), fp32 on other CPUs; the run says which, once | "fp32" | "bf16" | "fp16". Weights stay fp32
    precision: str = "auto"
    gradient_checkpointing: bool = False  # GPT2 / BERT: recompute blocks in backward to save memory
    compile: bool = False  # torch.compile the training forward/backward (the first steps pay for compiling)
    # CPU on Linux: glibc keeps freed blocks for reuse instead of returning every large tensor to the OS and
    # page-faulting it back each step (nanoft.training.device.keep_freed_memory)
    keep_freed_memory: bool = True
    find_unused_parameters: bool = False  # DDP: True when some parameters get no gradient (multi-task heads)
    # under torchrun: "ddp" keeps a whole copy of the model, its gradients and AdamW state in each process; "fsdp"
    # shards them across the processes (nanoft/training/fsdp.py). Its checkpoint is out_dir/checkpoint/, a folder of
    # shards, and after train() the model stays sharded: export with fsdp.load_sharded_weights
    parallel: str = "ddp"
    # evaluation and early stopping
    eval_every: int = 0  # optimizer steps between evaluations; 0: only at the end
    metric: str = "val_loss"  # the key of eval_fn's dict that picks the best checkpoint
    mode: str = "min"  # "min" (a loss) | "max" (an accuracy)
    patience: Optional[int] = None  # stop after this many evaluations without improvement; None: never
    restore_best: bool = False  # with eval_fn: end with the weights of the best evaluation, not the last step's
    # files: out_dir/checkpoint.pt (latest), best.pt (best weights), log.jsonl; out_dir None: no files
    out_dir: Optional[str] = None
    checkpoint_every: int = 0  # optimizer steps; 0: at each evaluation and at the end; -1: never (no resume)
    resume: bool = False  # continue from out_dir/checkpoint.pt when it exists
    log_every: int = 10
    progress: bool = True  # tqdm bar and messages (rank 0 only)
    verbose: bool = False  # also print the weight-decay parameter groups (nanoft.training.optim.describe_groups)
    seed: int = 0


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    stopped_early: bool
    best_metric: Optional[float]
    best_step: Optional[int]
    history: list = field(default_factory=list)  # the records of log.jsonl: {"type": "train"|"eval", "step", ...}
    # the validation curve, one row per evaluation: {"step", **eval_fn's metrics} from train(); a recipe may give
    # richer rows (fine_tune_lm: {"step", "tokens", "seconds", "ppl"}, from the model before training on)
    curve: list = field(default_factory=list)


class Optimization(NamedTuple):
    """What an optimizer step updates and a checkpoint keeps: AdamW, its schedule, fp16's loss scaler."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


@dataclass
class Progress:
    """Where a run is: what a checkpoint records besides the weights and the optimizer, and what resume restores."""
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # micro-batches done in this epoch
    # the best evaluation so far, and how many evaluations since then did not improve on it (early stopping)
    early: dict = field(default_factory=lambda: {"best": None, "best_step": None, "bad_evals": 0})
    rng: Optional[dict] = None  # this process's random streams at the checkpoint


def train(model: torch.nn.Module, train_data, loss_fn: Callable, cfg: TrainConfig,
          eval_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None,
          length_fn: Optional[Callable] = None) -> TrainResult:
    """Train `model` on a map-style dataset. loss_fn(model, batch) -> scalar loss; it must call model(...)
    (under DDP that call is what synchronises gradients). eval_fn(model) -> {metric name: value}.
    length_fn(example) -> its length in tokens, for cfg.group_by_length (default: example_length)."""
    _check_config(cfg, eval_fn)
    hw = setup_hardware(cfg)
    micro_per_epoch = _check_data(train_data, cfg.batch_size, hw.world)
    lengths = [int((length_fn or example_length)(train_data[i])) for i in range(len(train_data))] \
        if cfg.group_by_length else None
    from_epochs = max(1, cfg.epochs * micro_per_epoch // cfg.grad_accum_steps) if cfg.epochs else None
    cfg = replace(cfg, max_steps=min(s for s in (cfg.max_steps, from_epochs) if s is not None))
    plan = _data_plan(cfg, train_data, lengths)
    out = cfg.out_dir
    if out and hw.is_main:
        os.makedirs(out, exist_ok=True)
    seed_everything(cfg.seed + hw.rank)  # rank 0 matches a 1-process run; other ranks draw other dropout masks

    _place(model, cfg, hw)
    opt = _build_optimization(model, cfg, hw)
    run = _resume(cfg, hw, model, opt, plan)
    runner = _wrap(model, cfg, hw)
    batches = _micro_batches(train_data, cfg, hw.rank, hw.world, collate_fn, run.epoch, run.batch, hw.device, lengths)
    log = RunLog(out if hw.is_main else None, run.step)
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not (hw.is_main and cfg.progress), desc="train")
    if run.rng is not None:
        set_rng_state(run.rng, hw.device)  # last, so nothing above draws from the restored streams

    last_saved = run.step
    stopped_early = cfg.patience is not None and run.early["bad_evals"] >= cfg.patience  # resuming a finished run
    best_weights = None  # restore_best without out_dir: a CPU copy of the state_dict at the best evaluation
    t0, tokens = time.perf_counter(), 0.0
    try:
        while run.step < cfg.max_steps and not stopped_early:
            step_loss, step_tokens = _accumulate(runner, loss_fn, batches, cfg, hw, opt.scaler, run)
            if not math.isfinite(step_loss):  # every rank sees the same reduced loss, so all stop together
                kept = f"{out}/checkpoint.pt (step {last_saved})" if out and last_saved else "none (nothing saved yet)"
                raise FloatingPointError(f"loss is {step_loss} at step {run.step + 1}: stopping before the update; "
                                         f"last good checkpoint: {kept}. Lower lr, set grad_clip, or bf16 not fp16")
            lr, grad_norm = _optimizer_step(model, opt, cfg.grad_clip)
            run.step += 1
            tokens += step_tokens
            bar.update(1)

            if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
                _log_step(log, bar, run, step_loss, lr, grad_norm, tokens, time.perf_counter() - t0)
                t0, tokens = time.perf_counter(), 0.0

            if eval_fn and ((cfg.eval_every and run.step % cfg.eval_every == 0) or run.step == cfg.max_steps):
                metrics = _evaluate(model, eval_fn, cfg.metric, hw.world)
                log.write({"type": "eval", "step": run.step, **metrics})
                if _track_best(run, metrics, cfg):
                    best_weights = _keep_best(model, cfg, hw, run.step, metrics)
                stopped_early = cfg.patience is not None and run.early["bad_evals"] >= cfg.patience
                if hw.is_main and cfg.progress:
                    stop = f" (no improvement in {cfg.patience} evaluations: stopping)" if stopped_early else ""
                    bar.write(f"step {run.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + stop)

            every = cfg.checkpoint_every or cfg.eval_every
            if out and every >= 0 and ((every and run.step % every == 0) or run.step == cfg.max_steps
                                       or stopped_early):
                _save_checkpoint(model, opt, cfg, hw, run, plan)
                last_saved = run.step
        if hw.world > 1:
            # every rank finishes its last collective before any rank tears the group down: a gloo rank that
            # exits while a peer still talks to it aborts the whole run ("terminate called ...")
            dist.barrier()
        if cfg.restore_best and eval_fn and run.early["best"] is not None:
            _restore_best(model, cfg, hw, run, best_weights)
    finally:
        bar.close()
        log.close()
        if hw.created_group:
            # free DDP's reducer while the process group still stands: freed after it, the reducer holds the group's
            # last reference, and gloo's destructor then waits for a peer that may have exited (a hang at exit)
            runner = batches = None
            dist.destroy_process_group()
    return TrainResult(run.step, stopped_early, run.early["best"], run.early["best_step"], log.records, log.curve())


# ----------------------------------------------------------------------------- the steps of train()


def _place(model, cfg: TrainConfig, hw: Hardware) -> None:
    """The model on its device (or sharded over the processes with FSDP), in training mode."""
    if cfg.parallel == "fsdp" and hw.world > 1:  # before the optimizer: sharding makes new parameters
        fsdp.shard_model(model, hw.device, resolve_precision(cfg.precision, hw.device)[0])
    else:
        model.to(hw.device)
    model.train()
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)


def _build_optimization(model, cfg: TrainConfig, hw: Hardware) -> Optimization:
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(hw.device.type, enabled=hw.use_scaler)  # fp16 only; else every call passes
    if hw.is_main and cfg.progress and cfg.verbose:
        print("AdamW parameter groups (matrices get weight decay; biases, norms and embeddings do not):")
        print(describe_groups(optimizer.param_groups))
    return Optimization(optimizer, scheduler, scaler)


def _resume(cfg: TrainConfig, hw: Hardware, model, opt: Optimization, plan: dict) -> Progress:
    """The Progress of out_dir/checkpoint.pt, with the weights and the optimizer loaded from it, when cfg.resume
    and the file exists; else a fresh Progress."""
    if not (cfg.resume and cfg.out_dir):
        return Progress()
    if cfg.parallel == "fsdp":  # a folder of shards, that every process reads its own from
        path = fsdp.sharded_folder(cfg.out_dir)
        if path is None:
            return Progress()
        ckpt = fsdp.load_sharded(path, model, opt.optimizer)
        opt.scheduler.load_state_dict(ckpt["scheduler"])
    else:
        path = os.path.join(cfg.out_dir, "checkpoint.pt")
        if not os.path.exists(path):
            return Progress()
        ckpt = load_checkpoint(path, model, *opt)
    data = ckpt["data"]
    if (data["batch_size"], data["world_size"]) != (cfg.batch_size, hw.world):
        raise ValueError(f"checkpoint in {cfg.out_dir} was written with batch_size={data['batch_size']} on "
                         f"{data['world_size']} process(es): resume with the same, or set resume=False")
    # the checkpoint knows its place in the data as (epoch, batch) of an order these decide: another order
    # would skip the wrong batches, silently
    changed = {k: (data[k], plan[k]) for k in plan if data.get(k, plan[k]) != plan[k]}
    if changed:
        raise ValueError(f"checkpoint in {cfg.out_dir} was written with other data settings ("
                         + ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in changed.items())
                         + "): resume with the same data and settings, or set resume=False")
    if hw.is_main and cfg.progress:
        print(f"resuming from {path} at step {ckpt['step']}")
    return Progress(ckpt["step"], data["epoch"], data["batch"], ckpt["early_stopping"], ckpt["rng"][hw.rank])


def _wrap(model, cfg: TrainConfig, hw: Hardware):
    """What the training steps call: the model, under DDP with several processes, compiled with cfg.compile."""
    runner = DDP(model, find_unused_parameters=cfg.find_unused_parameters) \
        if hw.world > 1 and not fsdp.is_sharded(model) else model
    if cfg.compile:
        # a wrapper around the same parameters, used for the training steps only: eval_fn and the saved
        # state_dict see the plain model (no "_orig_mod." in the names, no recompiling for eval shapes)
        runner = torch.compile(runner)
    return runner


def _accumulate(runner, loss_fn, batches, cfg: TrainConfig, hw: Hardware, scaler, run: Progress) -> tuple:
    """Forward and backward of grad_accum_steps micro-batches, the gradients summed in place; moves run.epoch and
    run.batch on. Returns (mean loss over the step's micro-batches and processes, tokens in them)."""
    if cfg.loss_sum:
        return _accumulate_sums(runner, loss_fn, batches, cfg, hw, scaler, run)
    loss_sum = torch.zeros((), device=hw.device)
    step_tokens = 0
    for micro in range(cfg.grad_accum_steps):
        run.epoch, run.batch, batch, n_tokens = next(batches)
        step_tokens += n_tokens
        # DDP all-reduces (FSDP2 reduce-scatters) gradients in backward; only the last micro-batch needs it
        sync = hw.world == 1 or micro == cfg.grad_accum_steps - 1
        with fsdp.gradient_sync(runner, sync):
            with hw.autocast():
                loss = loss_fn(runner, batch)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn returned shape {tuple(loss.shape)}: return a scalar (e.g. .mean())")
            # each micro-batch loss is a mean, so dividing by the count makes the summed
            # gradient the gradient of the mean over the whole step's batch
            scaler.scale(loss / cfg.grad_accum_steps).backward()
        loss_sum += loss.detach().float()
    stats = torch.stack([loss_sum / cfg.grad_accum_steps, torch.tensor(float(step_tokens), device=hw.device)])
    if hw.world > 1:
        dist.all_reduce(stats)  # sum over processes (gloo has no AVG)
    step_loss, step_tokens = stats.tolist()  # one device->host sync per step
    return step_loss / hw.world, step_tokens



def _accumulate_sums(runner, loss_fn, batches, cfg: TrainConfig, hw: Hardware, scaler, run: Progress) -> tuple:
    """_accumulate for cfg.loss_sum: loss_fn returns a micro-batch's summed loss. The step's micro-batches are drawn
    first, so that their token count, summed over processes, is known before any backward: each gradient is then
    that of sum / the step's count, and k micro-batches give the gradient of one k-times-larger batch exactly, where
    a mean per micro-batch would weigh 10 tokens like 100 (transformers #34191)."""
    micro = []
    for _ in range(cfg.grad_accum_steps):
        run.epoch, run.batch, batch, n_tokens = next(batches)
        micro.append((batch, n_tokens))
    count = torch.tensor(float(sum(n for _, n in micro)), device=hw.device)
    if hw.world > 1:
        dist.all_reduce(count)  # every process divides by the same total
    count = count.item()
    if count == 0:
        raise ValueError("loss_sum=True, but the step's batches count no tokens: put the count of the tokens the "
                         "loss sums over in batch['num_tokens']")
    total = torch.zeros((), device=hw.device)
    for i, (batch, _) in enumerate(micro):
        sync = hw.world == 1 or i == len(micro) - 1
        with fsdp.gradient_sync(runner, sync):
            with hw.autocast():
                loss = loss_fn(runner, batch)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn returned shape {tuple(loss.shape)}: return the batch's summed loss")
            # DDP averages the processes' gradients: times world, that average is the gradient of global sum / count
            scaler.scale(loss * (hw.world / count)).backward()
        total += loss.detach().float()
    if hw.world > 1:
        dist.all_reduce(total)
    return total.item() / count, count


def _optimizer_step(model, opt: Optimization, grad_clip) -> tuple:
    """Clip, AdamW, schedule; returns (the lr this step used, the gradient norm before clipping or None)."""
    grad_norm = None
    if grad_clip:
        opt.scaler.unscale_(opt.optimizer)  # clip the true gradients, not the fp16-scaled ones
        grad_norm = fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))  # over all shards
    lr = opt.optimizer.param_groups[0]["lr"]
    opt.scaler.step(opt.optimizer)  # skips the update if fp16 gradients overflowed
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scheduler.step()
    return lr, grad_norm


def _log_step(log: RunLog, bar, run: Progress, loss: float, lr: float, grad_norm, tokens: float, elapsed: float):
    """A "train" record in the log (tokens/s since the last one), and the same numbers on the progress bar."""
    record = {"type": "train", "step": run.step, "epoch": run.epoch, "loss": loss, "lr": lr,
              "grad_norm": None if grad_norm is None else grad_norm.item(),
              "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0}
    log.write(record)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")


def _track_best(run: Progress, metrics: dict, cfg: TrainConfig) -> bool:
    """Update run.early with an evaluation; True when it is the best so far."""
    value, best = metrics[cfg.metric], run.early["best"]
    if best is None or (value < best if cfg.mode == "min" else value > best):
        run.early = {"best": value, "best_step": run.step, "bad_evals": 0}
        return True
    run.early["bad_evals"] += 1
    return False


def _keep_best(model, cfg: TrainConfig, hw: Hardware, step: int, metrics: dict) -> Optional[dict]:
    """Keep the best weights: out_dir/best.pt, or without out_dir (for restore_best) a CPU copy, returned."""
    if not (cfg.out_dir or cfg.restore_best):
        return None
    # sharded: every process takes part, and rank 0 gets the whole weights (the others {})
    weights = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else model.state_dict()
    if cfg.out_dir:
        if hw.is_main:
            save_checkpoint(os.path.join(cfg.out_dir, "best.pt"), {"model": weights, "step": step, "metrics": metrics})
        return None
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


def _save_checkpoint(model, opt: Optimization, cfg: TrainConfig, hw: Hardware, run: Progress, plan: dict) -> None:
    rng_states = gather(rng_state(hw.device), hw.world)  # every rank's dropout stream, for an exact resume
    state = {"scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(), "step": run.step,
             "data": {"epoch": run.epoch, "batch": run.batch, "batch_size": cfg.batch_size, "world_size": hw.world,
                      **plan},
             "rng": rng_states, "early_stopping": run.early, "config": plain(asdict(cfg))}
    if cfg.parallel == "fsdp":  # every process writes its shards of the weights and AdamW state
        fsdp.save_sharded(cfg.out_dir, model, opt.optimizer, state)
    elif hw.is_main:
        save_checkpoint(os.path.join(cfg.out_dir, "checkpoint.pt"),
                        {"model": model.state_dict(), "optimizer": opt.optimizer.state_dict(), **state})


def _restore_best(model, cfg: TrainConfig, hw: Hardware, run: Progress, best_weights: Optional[dict]) -> None:
    """End with the weights of the best evaluation. After the barrier, so that under DDP rank 0 has written best.pt
    before any rank reads it; every rank loads the same weights, so the processes stay in step for what the caller
    does next."""
    if fsdp.is_sharded(model):  # rank 0 reads the whole weights, every process keeps its shards of them
        if cfg.out_dir and hw.is_main:
            best_weights = load_checkpoint(os.path.join(cfg.out_dir, "best.pt"))["model"]
        fsdp.load_full_state_dict(model, best_weights if hw.is_main else {})
    elif cfg.out_dir:
        load_checkpoint(os.path.join(cfg.out_dir, "best.pt"), model)  # also right for a best found before a resume
    elif best_weights is not None:
        model.load_state_dict(best_weights)
    if hw.is_main and cfg.progress and run.early["best_step"] != run.step:
        print(f"restored the weights of step {run.early['best_step']} ({cfg.metric} {run.early['best']:.4f})")


# ----------------------------------------------------------------------------- data


def _check_data(dataset, batch_size: int, world: int) -> int:
    """Fail before training, with the fix in the message; returns micro-batches per epoch per process."""
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"train_data is a {type(dataset).__name__}: pass a map-style dataset (a list of examples or a "
                        "torch Dataset with __len__ and __getitem__), so that resume can find its place in it")
    if len(dataset) == 0:
        raise ValueError("train_data is empty: pass a dataset with at least one example")
    per_process = math.ceil(len(dataset) / world)  # DistributedSampler pads to equal shares
    if batch_size > per_process:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({len(dataset)} examples, "
                         f"{per_process} per process): lower batch_size to at most {per_process} or add data")
    return per_process // batch_size


def _data_plan(cfg, dataset, lengths=None) -> dict:
    """What decides which examples make micro-batch (epoch, i), besides batch_size and the number of processes."""
    plan = {"examples": len(dataset), "seed": cfg.seed, "shuffle": cfg.shuffle,
            "grad_accum_steps": cfg.grad_accum_steps, "group_by_length": lengths is not None}
    if lengths is not None:  # grouped batches depend on the lengths too: a checksum of them catches another length_fn
        plan["lengths_crc"] = zlib.crc32(np.asarray(lengths, dtype=np.int64).tobytes())
    return plan


def example_length(example) -> int:
    """The default length for group_by_length: len(example["input_ids"]) for a dict, else len(example)."""
    if isinstance(example, dict):
        if "input_ids" not in example:
            raise KeyError(f"group_by_length: the examples are dicts without 'input_ids' (keys {sorted(example)}): "
                           "pass train(..., length_fn=lambda ex: <its length>)")
        example = example["input_ids"]
    return len(example)


def grouped_batches(lengths, batch_size: int, epoch: int, seed: int, shuffle: bool = True,
                    pool_batches: int = 50) -> list:
    """One epoch of length-grouped batches: a list of batches, each a list of `batch_size` example indices.

    As transformers' group_by_length: shuffle the indices, cut them into pools of `pool_batches` batches, sort
    each pool by length (longest first) and cut it into batches, so a batch holds neighbours in length and has
    little padding; then shuffle the batches, so that the lengths seen step after step are not a sawtooth.
    The pool keeps the order random: sorting the whole data set would make the same batches every epoch.
    Small data sets get pools of a quarter of their batches (transformers' rule), so there are several pools.
    The order depends only on (seed, epoch): resume rebuilds it. What does not fill a whole batch is left out
    (random examples, different ones each epoch), as the plain order drops its ragged tail."""
    n = len(lengths)
    n_batches = n // batch_size
    g = torch.Generator().manual_seed(seed + epoch)  # seed + epoch, as DistributedSampler seeds its shuffle
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    order = order[:n_batches * batch_size]  # drop the leftover before sorting, so it is not always the shortest
    pool = min(pool_batches, max(1, n_batches // 4)) * batch_size
    batches = []
    for start in range(0, len(order), pool):
        group = sorted(order[start:start + pool], key=lambda i: -lengths[i])  # stable: ties keep the random order
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def _micro_batches(dataset, cfg, rank, world, collate_fn, epoch, start, device, lengths=None):
    """Yields (epoch, batches done in that epoch, batch on device, token count), forever, from position (epoch, start).

    The order of epoch e depends only on (seed, e), so resume can rebuild it and skip `start` batches
    without loading them. DistributedSampler gives each process its own share; with one process it is a
    plain seeded shuffle, so a 1-process run sees the same examples per step as an N-process run.
    With `lengths` (group_by_length) the batches come from grouped_batches, cut at the size of the global batch
    (batch_size * processes); process r takes every world-th example of each, so the processes of one step get
    sentences of about the same length and none waits long for the others."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=cfg.shuffle, seed=cfg.seed)
    bs = cfg.batch_size
    while True:
        if lengths is not None:
            # padded like DistributedSampler's share (its first examples again), so both give the same count of
            # batches per epoch: ceil(n / world) // batch_size per process
            padded = list(lengths) + list(lengths[:math.ceil(len(lengths) / world) * world - len(lengths)])
            glob = grouped_batches(padded, bs * world, epoch, cfg.seed, cfg.shuffle)
            plan = [[i % len(lengths) for i in b[rank::world]] for b in glob]
        else:
            sampler.set_epoch(epoch)
            order = list(sampler)
            # drop the ragged tail: equal micro-batches keep "k micro-batches == one k-times-larger batch" exact
            plan = [order[i:i + bs] for i in range(0, len(order) - bs + 1, bs)]
        # a DataLoader draws its workers' base seed from `generator`, or else from the global RNG, which
        # would shift the dropout masks of a resumed run: give it its own, and each process another one.
        # With num_workers > 0 a random collate_fn (MLM masking) draws in the workers, whose streams restart
        # at a resume: the batches' examples are still exact, their random masks are not
        seed = cfg.seed + epoch + 1_000_003 * rank
        loader = DataLoader(dataset, batch_sampler=plan[start:], collate_fn=collate_fn, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        for i, batch in enumerate(loader, start=start + 1):
            n_tokens = count_tokens(batch)  # before the copy: counting on the GPU would stall the loop
            yield epoch, i, to_device(batch, device), n_tokens
        epoch, start = epoch + 1, 0


def count_tokens(batch) -> int:
    """Tokens in a batch, for tokens/s: non-pad tokens when it has an attention_mask, else all input ids."""
    if not isinstance(batch, dict):
        return 0
    if "num_tokens" in batch:
        return int(batch["num_tokens"].sum()) if torch.is_tensor(batch["num_tokens"]) else int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return ids.numel() if torch.is_tensor(ids) else 0


# ----------------------------------------------------------------------------- setup and evaluation


def _check_config(cfg: TrainConfig, eval_fn) -> None:
    if cfg.max_steps is None and cfg.epochs is None:
        raise ValueError("TrainConfig needs max_steps or epochs: set one of them")
    if cfg.decay not in ("linear", "cosine"):
        raise ValueError(f"decay={cfg.decay!r}: use 'linear' or 'cosine'")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel={cfg.parallel!r}: use 'ddp' (a copy of the model per process) or 'fsdp' (sharded)")
    if cfg.mode not in ("min", "max"):
        raise ValueError(f"mode={cfg.mode!r}: use 'min' for a loss or 'max' for an accuracy")
    if cfg.patience is not None and eval_fn is None:
        raise ValueError("patience is set but there is no eval_fn: pass eval_fn, or set patience=None")
    if min(cfg.batch_size, cfg.grad_accum_steps, cfg.log_every) < 1:
        raise ValueError(f"batch_size={cfg.batch_size}, grad_accum_steps={cfg.grad_accum_steps}, "
                         f"log_every={cfg.log_every}: each must be >= 1")


def seed_everything(seed: int) -> None:
    """One seed for python's random, numpy and torch (CPU and every GPU): call it before building the model too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    found = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    if not found:
        raise ValueError(f"gradient_checkpointing=True, but {type(model).__name__} has no module with a "
                         "`gradient_checkpointing` attribute (GPT2 and BERT have one): set it to False")
    for m in found:  # e.g. the BERT encoder inside a MultiTaskModel
        m.gradient_checkpointing = True


def _evaluate(model, eval_fn, metric: str, world: int) -> dict:
    # in fp32, without the training's autocast: the best figure is then the one a check with the same eval_fn
    # after training gives
    model.eval()  # no dropout; gradient checkpointing is off outside training
    with torch.no_grad():
        metrics = {k: float(v) for k, v in eval_fn(model).items()}
    model.train()
    if metric not in metrics:
        raise KeyError(f"eval_fn returned {sorted(metrics)} but cfg.metric is {metric!r}: return it, or change metric")
    if world > 1:  # every rank evaluates; rank 0's numbers decide, so all ranks stop at the same step
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics
