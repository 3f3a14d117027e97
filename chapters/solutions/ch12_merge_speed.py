"""Chapter 12, exercise 5: LoRA merged or unmerged, how much faster is inference?

Unmerged, every adapted layer computes W x + B (A x) * alpha / r: the base matmul plus two thin ones, and their
extra reads and launches. Merged (nanoft.quant.lora.merge_lora), W + B A * alpha / r is folded into the weight once and
the layer is one matmul again, with the same outputs (checked here). On the real all-MiniLM-L6-v2 with rank-r
adapters on every block linear (B filled with small random values, as after training: B = 0, as at
initialisation, would change nothing), the script times the forward pass of the SST-2 classifier at two shapes,
a batch (as in evaluation) and a single short sentence (as in serving), and prints the medians.

    python -m chapters.solutions.ch12_merge_speed
    python -m chapters.solutions.ch12_merge_speed --rank 64 --threads 1
"""
import statistics
import time

import torch

from nanoft import BERT, seed_everything
from nanoft.io.assets import minilm_dir
from nanoft.recipes.classification import sentence_classifier
from nanoft.cli.flags import ChapterParser, nonneg_int, positive_int, run_main
from nanoft.quant.lora import add_lora, lora_layers, merge_lora
from nanoft.cli.report import check_out_dir, print_table, save_rows


def build_parser():
    p = ChapterParser("ch12_merge_speed", __doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a BERT (local folder or hub id); default: the real all-MiniLM-L6-v2")
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed forward passes per shape (median)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out-dir", default="runs/ch12", help="where exercise_merge_speed.json goes")
    return p


def median_ms(model, batch, repeats):
    model("sst2", batch)  # warm-up: the first call allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model("sst2", batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_out_dir(args.out_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    model = add_lora(sentence_classifier(BERT.from_pretrained(args.model or minilm_dir()), pooling="mean",
                                         task="sst2"),
                     r=args.rank, alpha=2 * args.rank, targets="all").eval()
    for _, layer in lora_layers(model):
        for B in layer.lora_B:
            B.normal_(std=0.02)  # as if trained
    repeats = 2 if args.smoke else args.repeats
    shapes = [(4, 16), (1, 8)] if args.smoke else [(32, 64), (1, 16)]  # (sentences, tokens)
    vocab = model.encoder.config.vocab_size
    batches = {s: {"input_ids": torch.randint(1000, vocab, s), "attention_mask": torch.ones(s, dtype=torch.long)}
               for s in shapes}
    before = {s: model("sst2", b)["logits"] for s, b in batches.items()}
    unmerged = {s: median_ms(model, b, repeats) for s, b in batches.items()}
    merge_lora(model)
    diff = max((model("sst2", b)["logits"] - before[s]).abs().max().item() for s, b in batches.items())
    rows = [dict(shape=f"{s[0]} x {s[1]} tokens", unmerged_ms=unmerged[s], merged_ms=median_ms(model, b, repeats))
            for s, b in batches.items()]
    for r in rows:
        r["speedup"] = r["unmerged_ms"] / r["merged_ms"]
    print_table(rows, [("batch", "shape", "{}"), ("unmerged ms", "unmerged_ms", "{:.2f}"),
                       ("merged ms", "merged_ms", "{:.2f}"), ("merged speed-up", "speedup", "{:.2f}x")])
    print(f"rank {args.rank} on all {len(lora_layers(model))} block linears; merged logits differ from unmerged by "
          f"at most {diff:.1e} (float rounding: the same function)")
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_merge_speed')}")
    return rows, diff


if __name__ == "__main__":
    run_main(main)
