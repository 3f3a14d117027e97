"""Chapter 14, exercise 5: DPO on summed or on mean log-probs (TRL #789)? Two DPO runs continuing copies of the same
SFT adapter on the same pairs: the chapter's loss on each answer's summed log-prob, and the same loss on its mean
log-prob per token, with a beta that many times larger; measured on the test pairs and by the length of greedy
answers.

    python -m chapters.solutions.ch14_dpo_mean --data-dir ../shared/data --threads 1
"""
from .ch14_common import (add_dpo_flags, answer_stats, answers, base_parser, dpo, dpo_data, dpo_steps, first,
                          note_sample, sft_adapter, start)
from nanoft import evaluate_preferences
from nanoft.cli.flags import positive_float, run_main
from nanoft.cli.report import print_table, save_rows


def build_parser():
    p = base_parser("ch14_dpo_mean", __doc__, test_records=55)
    add_dpo_flags(p, beta=0.1)
    p.add_argument("--mean-beta", type=positive_float, default=1.5,
                   help="beta of the run on mean log-probs (--beta is the summed run's): a mean is about one answer's "
                   "length (15 tokens here) times smaller than a sum, so 15 x 0.1 starts both at the same scale")
    return p


def length_stats(pairs):
    """Mean response tokens of the chosen and the rejected answers (end-of-turn included), % of pairs whose chosen
    answer is the longer."""
    n = [(sum(t != -100 for t in p["chosen"]["labels"]), sum(t != -100 for t in p["rejected"]["labels"]))
         for p in pairs]
    return (sum(c for c, _ in n) / len(n), sum(r for _, r in n) / len(n), 100.0 * sum(c > r for c, r in n) / len(n))


def main(argv=None):
    args = build_parser().parse_args(argv)
    run, setup = start(args)
    sft_model, sft_seconds, loaded = sft_adapter(setup, args, run)
    pairs = dpo_data(setup, args, sft_model)
    gen = first(first(setup.data["test"], args.test_records), args.gen_records)
    chosen, rejected, longer = length_stats(pairs["train"])
    print(f"training pairs: chosen {chosen:.1f} tokens on average, rejected {rejected:.1f}; the chosen answer is the "
          f"longer in {longer:.0f}% of pairs")
    rows = []
    for name, beta, mean in (("SFT", None, None), ("DPO, summed log-probs", args.beta, False),
                             ("DPO, mean log-probs", args.mean_beta, True)):
        if beta is None:
            model, seconds, steps = sft_model, sft_seconds, None
        else:
            print(f"\n# {name}, beta {beta:g}: {args.dpo_steps} steps of {args.dpo_batch_size} pairs, lr "
                  f"{args.dpo_lr:g}")
            model, result, seconds = dpo(setup, sft_model, pairs["train"], run, args, beta, average_logps=mean)
            steps = dpo_steps(result)
        test = evaluate_preferences(model, pairs["test"], beta=beta, pad_id=setup.pad) if beta else pairs["sft"]
        row = dict(model=name, beta=beta, reward_acc=test["reward_accuracy"] if beta else None,
                   pref_acc=test["preference_accuracy"], chosen_ppl=test["chosen_perplexity"],
                   first_loss=steps[0]["loss"] if steps else None, last_loss=steps[-1]["loss"] if steps else None,
                   seconds=seconds, **answer_stats(answers(model, setup, gen, args.gen_tokens), gen))
        reward = f"reward accuracy {row['reward_acc']:.1f}%, " if beta else ""
        print(f"  -> {name}: {reward}preference accuracy {row['pref_acc']:.1f}%, chosen perplexity"
              f" {row['chosen_ppl']:.2f}; greedy answers {row['length']:.1f} tokens on average, "
              f"{row['stopped']:.0f}% ended their turn")
        rows.append(row)
        save_rows(rows, args.out_dir, "exercise_dpo_mean")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("model", "model", "{}"), ("beta", "beta", "{:g}"), ("reward acc %", "reward_acc", "{:.1f}"),
                       ("pref. acc %", "pref_acc", "{:.1f}"), ("chosen ppl", "chosen_ppl", "{:.2f}"),
                       ("answer tokens", "length", "{:.1f}"), ("ended turn %", "stopped", "{:.0f}"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"(test pairs: {len(pairs['test'])}, both accuracies on summed log-probs, as the chapter's; greedy answers "
          f"to {len(gen)} test prompts, at most {args.gen_tokens} tokens; SFT: {args.sft_steps} steps"
          f"{', loaded' if loaded else ''})")
    note_sample(setup.data["sample"], pairs["sample"])
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_dpo_mean')}")
    return rows


if __name__ == "__main__":
    run_main(main)
