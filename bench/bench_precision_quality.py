"""Does bf16 autocast change what fine-tuning reaches? SST-2 dev accuracy, bf16 against fp32, over several seeds.

    python bench/bench_precision_quality.py --threads 1              # 3 seeds, chapter 13's SST-2 default size

The same fine-tuning as chapter 13's default SST-2 run (all-MiniLM-L6-v2 + a classification head on the
pooled [CLS], 4,000 training sentences, batch 32, max_len 64, 100 steps, lr 2e-4, 10% warmup then linear decay),
once with precision="fp32" and once with "bf16" for each seed; the accuracy is on the whole official dev set
(872 sentences), evaluated in the precision the run trained in. Both runs of a seed start from the same head
initialisation and see the same batches (group_by_length, to halve the time; the same for both precisions).
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import Classifier, collate, encode, minilm_dir  # noqa: E402
from common import add_common_args, machine, print_table, setup  # noqa: E402

from nanoft.models.bert import BERT  # noqa: E402
from nanoft.data.datasets import dataset_path, read_sst2  # noqa: E402
from nanoft.training.device import autocast_for  # noqa: E402
from nanoft.io.tokenizer import load_bert_tokenizer  # noqa: E402
from nanoft.training.train import TrainConfig, seed_everything, train  # noqa: E402


@torch.no_grad()
def dev_accuracy(model, feats, precision):
    model.eval()
    ctx, _ = autocast_for(precision, torch.device("cpu"))
    right = 0
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))  # little padding
    for i in range(0, len(order), 64):
        batch = collate([feats[j] for j in order[i:i + 64]])
        with ctx():
            hidden = model.encoder(batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = model.out(model.encoder.pool(hidden))
        right += (logits.argmax(-1) == batch["labels"]).sum().item()
    return right / len(feats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--train-n", type=int, default=4000)
    add_common_args(p)
    args = p.parse_args(argv)
    setup(args)
    folder = minilm_dir()
    tok = load_bert_tokenizer(folder)
    train_rows = read_sst2(dataset_path("sst2/train.tsv", args.data_dir).path)
    dev = encode(read_sst2(dataset_path("sst2/dev.tsv", args.data_dir).path), tok, 64)
    encoder = BERT.from_pretrained(folder)
    print(f"machine: {machine('cpu')}")
    rows, accs = [], {"fp32": [], "bf16": []}
    for seed in args.seeds:
        pick = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed))[:args.train_n].tolist()
        feats = encode([train_rows[i] for i in pick], tok, 64)
        for precision in ("fp32", "bf16"):
            seed_everything(seed)  # the same head initialisation for both precisions
            model = Classifier(copy.deepcopy(encoder))
            cfg = TrainConfig(lr=2e-4, weight_decay=0.01, max_steps=args.steps, warmup_steps=args.steps // 10,
                              decay="linear", batch_size=32, device="cpu", precision=precision, group_by_length=True,
                              progress=False, seed=seed, log_every=args.steps)
            t0 = time.perf_counter()
            train(model, feats, lambda m, b: m(b), cfg, collate_fn=collate)
            acc = dev_accuracy(model, dev, precision)
            accs[precision].append(acc)
            print(f"seed {seed} {precision}: dev accuracy {acc:.2%} ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append([seed, f"{accs['fp32'][-1]:.2%}", f"{accs['bf16'][-1]:.2%}",
                     f"{(accs['bf16'][-1] - accs['fp32'][-1]) * 100:+.2f}"])
    mean = {k: statistics.mean(v) for k, v in accs.items()}
    rows.append(["mean", f"{mean['fp32']:.2%}", f"{mean['bf16']:.2%}", f"**{(mean['bf16'] - mean['fp32']) * 100:+.2f}**"])
    print_table(f"SST-2 dev accuracy after {args.steps} steps (MiniLM, chapter 13's default size)",
                ["seed", "fp32", "bf16 autocast", "difference, points"], rows)


if __name__ == "__main__":
    main()
