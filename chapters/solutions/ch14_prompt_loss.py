"""Chapter 14, exercise 1: should SFT's loss cover the prompt too? Two SFT runs of the same LoRA init, records and
order, one with the loss on the response alone (the chapter's), one on the whole conversation (Shi et al., 2024,
"Instruction tuning with loss over instructions"), both measured on the responses alone.

    python -m chapters.solutions.ch14_prompt_loss --data-dir ../shared/data --threads 1
"""
from .ch14_common import (answer_stats, answers, base_parser, first, note_sample, perplexity, sft,
                          sft_adapter, start)
from nanoft import sft_features
from nanoft.cli.flags import run_main
from nanoft.cli.report import print_table, save_rows


def build_parser():
    return base_parser("ch14_prompt_loss", __doc__)


def main(argv=None):
    args = build_parser().parse_args(argv)
    run, setup = start(args)
    records = first(setup.data["train"], args.train_records)
    test = sft_features(first(setup.data["test"], args.test_records), setup.tok, args.max_len)  # always masked
    gen = first(test.records, args.gen_records)
    rows = []
    for mask in (True, False):
        train = sft_features(records, setup.tok, args.max_len, mask_prompt=mask, verbose=mask).features
        trained = sum(t != -100 for f in train for t in f["labels"])
        what = "response only" if mask else "prompt + response"
        print(f"\n# SFT, the loss on the {what}: {len(train)} records, {trained:,} labelled tokens in all")
        if mask:  # the chapter's SFT: the adapter the DPO exercises continue (trained once, or loaded)
            model, seconds, _ = sft_adapter(setup, args, run)
        else:
            model, _, seconds = sft(setup, train, run, args.sft_steps, args.lr, "lora", args.rank, args.lora_alpha)
        out = answers(model, setup, gen, args.gen_tokens)
        row = dict(loss_on=what, mask_prompt=mask, labelled_tokens=trained, seconds=seconds,
                   test_ppl=perplexity(model, test.features), **answer_stats(out, gen))
        print(f"  -> test response perplexity {row['test_ppl']:.2f}, ROUGE-L {row['rouge']:.1f}, "
              f"{row['stopped']:.0f}% of answers ended their turn; {seconds:.0f} s")
        rows.append(row)
        save_rows(rows, args.out_dir, "exercise_prompt_loss")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("loss on", "loss_on", "{}"), ("labelled tokens", "labelled_tokens", "{:,}"),
                       ("test ppl", "test_ppl", "{:.2f}"), ("ROUGE-L", "rouge", "{:.1f}"),
                       ("ended turn %", "stopped", "{:.0f}"), ("answer tokens", "length", "{:.1f}"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"({args.sft_steps} SFT steps of {args.batch_size}; test perplexity of the {len(test.features)} test "
          f"responses, the prompt masked in both; greedy answers to {len(gen)} test prompts)")
    note_sample(setup.data["sample"])
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_prompt_loss')}")
    return rows


if __name__ == "__main__":
    run_main(main)
