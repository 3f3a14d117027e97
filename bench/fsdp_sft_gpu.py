"""SFT of a 1B Llama-family chat model on several GPUs with FSDP2, and each GPU's peak memory beside the formula.

    torchrun --standalone --nproc_per_node=4 bench/fsdp_sft_gpu.py --model meta-llama/Llama-3.2-1B-Instruct
    torchrun --standalone --nproc_per_node=2 bench/fsdp_sft_gpu.py --model HuggingFaceTB/SmolLM2-1.7B-Instruct \
        --method lora --lr 2e-4
    torchrun --standalone --nproc_per_node=2 bench/fsdp_sft_gpu.py --device cpu --model $(python -c \
        "import nanoft; print(nanoft.smollm2_gguf())") --max-steps 2 --batch-size 1 --max-len 128   # a CPU smoke run

The run this project's CPUs cannot do, for readers with GPUs: the instruction data (nanoft.load_instructions),
rendered with the model's own chat template and trained on the responses only (nanoft's SFT recipe), under
TrainConfig(parallel="fsdp", precision="auto"): each GPU keeps 1/N of the fp32 weights, gradients and AdamW
moments, and computes in bf16 (FSDP2's MixedPrecisionPolicy). Every process reads the checkpoint into CPU memory
first (4 bytes per parameter each), then keeps only its shard on its GPU.

What a GPU should need, with P parameters, N GPUs, B sequences of T tokens per micro-batch and V the vocabulary:
    16 P / N                    fp32 weights 4 + gradients 4 + AdamW moments 8 bytes, sharded
  + 2 x 2 P_root + 2 x 2 P_block  the gathered bf16 weights and their bf16 gradients of the root group (embedding and
                                tied head) for the whole step, and of a block or two (one computes, one is prefetched)
  + activations                 with gradient checkpointing the blocks' inputs, 2 B T C L bytes, plus one block's;
                                and the logits: B T V in bf16, in fp32 for the loss, and its fp32 gradient (10 B T V)
At the end rank 0 prints every GPU's torch.cuda.max_memory_allocated beside that sum, and exports the sharded
checkpoint to one Hugging Face folder (out_dir/hf, loadable by transformers) or a PEFT adapter (out_dir/adapter).
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from nanoft import (Llama, TrainConfig, fine_tune_sft, load_instructions, load_sharded_weights,  # noqa: E402
                    load_tokenizer, merge_and_unload, prepare_for_tuning, save_adapter, sft_features)

GB = 1e9


def expected_bytes(model, n_gpus, batch, seq, trained) -> dict:
    """The formula above, per GPU, for `model` (a plain Llama) with `trained` parameters that train."""
    cfg = model.config
    total = model.num_parameters()
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    root = total - block * cfg.num_hidden_layers
    frozen = total - trained
    return {
        "sharded state": (4 * frozen + 16 * trained) / n_gpus,  # frozen weights: 4 bytes and nothing else
        "gathered weights": 2 * 2 * root + 2 * 2 * 2 * block,
        "activations": 2 * batch * seq * cfg.hidden_size * cfg.num_hidden_layers + 10 * batch * seq * cfg.vocab_size,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.2-1B-Instruct",
                    help="hub id, folder or .gguf file of a Llama-family chat model (Llama 3.x, SmolLM2, Qwen2.5)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the same code")
    ap.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per GPU per micro-batch")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out-dir", default="runs/fsdp_sft")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    if "WORLD_SIZE" not in os.environ or (gpu and not torch.cuda.is_available()):
        raise SystemExit("run it under torchrun on GPUs: torchrun --standalone --nproc_per_node=<GPUs> "
                         "bench/fsdp_sft_gpu.py --model ... (or --device cpu for a smoke run)")
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpu else "gloo")  # ours, so that it outlives train() for the memory report
    rank, world = dist.get_rank(), dist.get_world_size()

    tokenizer = load_tokenizer(args.model)
    data = load_instructions(args.data_dir)
    train_set = sft_features(data["train"], tokenizer, max_len=args.max_len)
    val_set = sft_features(data["val"], tokenizer, max_len=args.max_len)
    model = prepare_for_tuning(load_model(args.model), args.method)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = expected_bytes(model, world, args.batch_size, args.max_len, trained)
    cfg = TrainConfig(lr=args.lr, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                      grad_accum_steps=args.grad_accum, warmup_steps=10, device=args.device, precision="auto",
                      parallel="fsdp", gradient_checkpointing=not args.no_gradient_checkpointing,
                      out_dir=args.out_dir, eval_every=50, progress=rank == 0, log_every=10)
    result = fine_tune_sft(model, train_set.features, cfg, val_features=val_set.features,
                           pad_id=tokenizer.pad_token_id or 0)

    peaks = [None] * world
    dist.all_gather_object(peaks, torch.cuda.max_memory_allocated() if gpu else peak_rss())
    if rank == 0:
        print(f"\n{args.model}, {args.method}: {model.num_parameters() / 1e9:.2f}B parameters ({trained / 1e9:.3f}B "
              f"trained), {world} {'GPUs' if gpu else 'CPU processes'}, {args.batch_size} x {args.max_len} tokens per "
              f"process per micro-batch; "
              f"best val_loss {result.best_metric}")
        print("expected per GPU: " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in expected.items())
              + f" = {sum(expected.values()) / GB:.2f} GB")
        for r, peak in enumerate(peaks):
            if gpu:
                print(f"GPU {r}: peak allocated {peak / GB:.2f} GB ({peak / sum(expected.values()):.2f}x expected)")
            else:  # the resident peak counts Python, torch and loading the checkpoint too: bench_fsdp.py measures
                print(f"process {r}: peak resident {peak / GB:.2f} GB (with the runtime and the loading)")
        export(args, cfg)
    dist.barrier()
    dist.destroy_process_group()


def load_model(name):
    return Llama.from_gguf(name) if str(name).endswith(".gguf") else Llama.from_pretrained(name)


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def export(args, cfg):
    """The sharded checkpoint, read back whole on the CPU: one Hugging Face folder, and for LoRA a PEFT adapter."""
    model = prepare_for_tuning(load_model(args.model), args.method)
    load_sharded_weights(model, os.path.join(cfg.out_dir, "checkpoint"))
    if args.method != "full":
        save_adapter(model, os.path.join(cfg.out_dir, "adapter"), base_model_name_or_path=args.model)
        model = merge_and_unload(model)
    model.save_pretrained(os.path.join(cfg.out_dir, "hf"))
    print(f"exported {cfg.out_dir}/hf" + (f" and {cfg.out_dir}/adapter" if args.method != "full" else ""))


if __name__ == "__main__":
    main()
