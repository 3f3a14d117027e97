"""Chapter 12, exercises 3 and 4: NF4's block size, and NF4 against a uniform int4 codebook, on real weights.

Every linear layer in the transformer blocks of the real all-MiniLM-L6-v2 (and of a GPT-2 given with --gpt2) is
quantized to 4 bits per weight, block by block (each block scaled by its absmax), with two 16-value codebooks:
  NF4   the QLoRA paper's NormalFloat: values at normal quantiles, dense near 0 where most weights are
        (nanoft.quant.nf4.NF4_CODE, derived in nanoft/quant/nf4.py);
  int4  a uniform grid, -7..7 / 7 (15 evenly spaced values with an exact 0, as absmax int4 is usually made).
For each codebook and block size the table gives the relative error of the dequantized weights,
||W - Q(W)|| / ||W|| over all of them, and the bits stored per weight (4 bits of code, plus the block scales: fp32
for int4, double-quantized to 8 bits for NF4 as QLoRA does). The chapter measures what the error costs in accuracy:
`python chapters/ch12_quantized_fine_tuning.py ptq --task sst2 --nf4-block 256`.

    python -m chapters.solutions.ch12_codebooks
    python -m chapters.solutions.ch12_codebooks --blocks 16,64,1024 --gpt2 gpt2     # a hub id or a local folder
"""
import torch

from nanoft import BERT, GPT2
from nanoft.io.assets import minilm_dir
from nanoft.cli.flags import ChapterParser, list_of, nf4_block, run_main
from nanoft.quant.targets import block_linears
from nanoft.quant.nf4 import dequantize_blockwise, dequantize_nf4, quantize_blockwise, quantize_nf4
from nanoft.cli.report import check_out_dir, print_table, save_rows

INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7  # 15 uniform values in [-1, 1], 0 among them


def build_parser():
    p = ChapterParser("ch12_codebooks", __doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a BERT (local folder or hub id); default: the real all-MiniLM-L6-v2")
    p.add_argument("--gpt2", default=None, help="also a GPT-2 (a local Hugging Face folder or a hub id)")
    p.add_argument("--blocks", type=list_of(nf4_block, "32,64"), default=[32, 64, 128, 256],
                   help="block sizes, comma-separated (powers of two)")
    p.add_argument("--out-dir", default="runs/ch12", help="where exercise_codebooks.json goes")
    return p


def nf4_round_trip(w, block_size):  # as NF4Linear stores it: block scales double-quantized
    return dequantize_nf4(quantize_nf4(w, block_size=block_size))


def int4_round_trip(w, block_size):  # fp32 block scales
    return dequantize_blockwise(*quantize_blockwise(w, INT4_CODE, block_size), INT4_CODE, block_size).view_as(w)


def relative_error(weights, round_trip, block_size):
    """||W - Q(W)|| / ||W|| over all the weights together."""
    err = sum((w - round_trip(w, block_size)).pow(2).sum().item() for w in weights)
    return (err / sum(w.pow(2).sum().item() for w in weights)) ** 0.5


@torch.no_grad()
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_out_dir(args.out_dir)
    models = {"all-MiniLM-L6-v2" if args.model is None else args.model: BERT.from_pretrained(args.model or minilm_dir())}
    if args.gpt2:
        models[args.gpt2] = GPT2.from_pretrained(args.gpt2)
    blocks = args.blocks[:1] if args.smoke else args.blocks
    rows = []
    for name, net in models.items():
        weights = [net.get_submodule(n).weight.float() for n in block_linears(net)]
        weights = weights[:1] if args.smoke else weights
        n = sum(w.numel() for w in weights)
        print(f"{name}: {len(weights)} block linear layers, {n:,} weights")
        for b in blocks:
            nf4_bits = 8 * sum(quantize_nf4(w, block_size=b).nbytes() for w in weights) / n
            for fn, what, bits in ((nf4_round_trip, "NF4", nf4_bits), (int4_round_trip, "int4 (uniform)", 4 + 32 / b)):
                rows.append(dict(model=name, codebook=what, block=b, rel_error=relative_error(weights, fn, b),
                                 bits=bits))
    print_table(rows, [("model", "model", "{}"), ("codebook", "codebook", "{}"), ("block", "block", "{}"),
                       ("relative error", "rel_error", "{:.4f}"), ("bits / weight", "bits", "{:.3f}")])
    print("relative error = ||W - Q(W)|| / ||W||; bits: 4 of code + the block scales (NF4: double-quantized)")
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_codebooks')}")
    return rows


if __name__ == "__main__":
    run_main(main)
