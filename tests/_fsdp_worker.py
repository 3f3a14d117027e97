"""A tiny SFT run of a tiny language model, for tests/test_fsdp.py: FSDP2 against one process, and SIGKILL-and-resume.

    launch([OUT_DIR, "--adapters", "lora"])      2 processes forked from the caller, joined by gloo, as torchrun would
    torchrun --standalone --nproc_per_node=2 tests/_fsdp_worker.py OUT_DIR --adapters lora     the same, by hand
    python tests/_fsdp_worker.py OUT_DIR --batch-size 4 --parallel ddp     (one process: the reference)

launch forks instead of starting new interpreters: the ranks need no second `import torch` (2 s of CPU each on a
small machine), which is most of what a test of 20 tiny steps would otherwise cost.

SFT-like: each example is a prompt and an answer, and only the answer's tokens are targets (-100 on the prompt),
as in an instruction-tuning batch {"input_ids", "labels"}. With --kill-at-call K rank 1 sends itself SIGKILL inside
the K-th call of the loss function, in the middle of an optimizer step; torchrun then stops rank 0 too.
"""
import argparse
import os
import signal
import socket
import sys
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanoft.models.llama import Llama, LlamaConfig  # noqa: E402
from nanoft.quant.lora import add_lora  # noqa: E402
from nanoft.quant.quantize import quantize_model  # noqa: E402
from nanoft.training.fsdp import full_state_dict, is_sharded  # noqa: E402
from nanoft.training.train import TrainConfig, seed_everything, train  # noqa: E402

VOCAB, SEQ, PROMPT = 64, 12, 5


def tiny_lm(adapters: str = "none"):
    """A 2-block Llama (SmolLM2's shape, tiny: grouped-query attention, tied head); adapters: "none" (full
    fine-tuning), "lora" (LoRA on every block linear) or "qlora" (the same over an NF4 base)."""
    seed_everything(0)
    model = Llama(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    if adapters == "qlora":
        quantize_model(model, "nf4")
    if adapters in ("lora", "qlora"):
        add_lora(model, r=4, alpha=8, targets="all")
    return model


def sft_dataset(n=48):
    """Prompt: PROMPT random tokens; answer: a counting sequence from the prompt's last token (learnable)."""
    g = torch.Generator().manual_seed(1234)
    examples = []
    for _ in range(n):
        prompt = torch.randint(0, VOCAB, (PROMPT,), generator=g)
        answer = (prompt[-1] + torch.arange(1, SEQ - PROMPT + 2)) % VOCAB
        ids = torch.cat([prompt, answer])  # SEQ + 1 tokens: inputs are the first SEQ, targets the last SEQ
        labels = ids[1:].clone()
        labels[:PROMPT - 1] = -100  # the prompt is given, not learnt: the first target is the answer's first token
        # num_tokens: what TrainConfig(loss_sum=True) divides the step's summed loss by (the labelled tokens)
        examples.append({"input_ids": ids[:-1], "labels": labels, "num_tokens": (labels != -100).sum()})
    return examples


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--parallel", default="fsdp")
    ap.add_argument("--adapters", default="none", choices=["none", "lora", "qlora"])
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=0)  # 0: at the end only
    ap.add_argument("--kill-at-call", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    # evaluations: val_loss with mode="max", so that the best is the first one and restore_best has to bring it back
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--loss-sum", action="store_true", help="the SFT recipe's summed loss")
    args = ap.parse_args(argv)

    model = tiny_lm(args.adapters)
    calls, rank = 0, int(os.environ.get("RANK", "0"))

    def loss_fn(m, batch):
        nonlocal calls
        calls += 1
        if calls == args.kill_at_call and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.loss_sum:
            logits = m(batch["input_ids"])[0]
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")
        return m(batch["input_ids"], targets=batch["labels"])[1]

    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2, max_steps=args.max_steps, min_lr_ratio=0.1,
                      batch_size=args.batch_size, grad_accum_steps=args.accum, grad_clip=0.5, device="cpu",
                      precision=args.precision, out_dir=args.out_dir, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, log_every=1, progress=False, seed=7, parallel=args.parallel,
                      eval_every=args.eval_every, metric="val_loss", mode="max", restore_best=args.eval_every > 0,
                      loss_sum=args.loss_sum, gradient_checkpointing=args.gradient_checkpointing)
    held_out = sft_dataset(56)[48:]  # 8 examples after the training ones

    def eval_fn(m):
        batch = {k: torch.stack([ex[k] for ex in held_out]) for k in ("input_ids", "labels")}
        return {"val_loss": m(batch["input_ids"], targets=batch["labels"])[1].item()}

    train(model, sft_dataset(), loss_fn, cfg, eval_fn=eval_fn if args.eval_every else None)
    # the weights train() ended with (the best evaluation's, with restore_best), whole, from rank 0
    weights = full_state_dict(model) if is_sharded(model) else model.state_dict()
    if rank == 0:
        torch.save(weights, os.path.join(args.out_dir, "final.pt"))


def launch(argv, world=2) -> list:
    """main(argv) on `world` forked processes, one thread each; returns their exit codes in rank order. As torchrun
    does, when one process dies the others are stopped: they would wait for it in their next collective."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [mp.get_context("fork").Process(target=_rank, args=(rank, world, port, argv)) for rank in range(world)]
    for p in procs:
        p.start()
    running = list(procs)
    while running:
        wait([p.sentinel for p in running])
        for p in [p for p in running if not p.is_alive()]:
            running.remove(p)
            if p.exitcode != 0:
                for q in running:
                    q.kill()
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def _rank(rank, world, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # our process group, not train()'s: it outlives train(), so main can still gather the sharded weights after it
    dist.init_process_group("gloo")
    main(argv)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
