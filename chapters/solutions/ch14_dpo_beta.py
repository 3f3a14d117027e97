"""Chapter 14, exercise 2: what does DPO's beta do? DPO runs with several betas, each continuing its own copy of
the same SFT adapter on the same pairs, with the SFT model as the reference; measured on the test pairs: DPO's reward
accuracy, the model's own preference accuracy, and the perplexity of the chosen answers (likelihood displacement).

    python -m chapters.solutions.ch14_dpo_beta --data-dir ../shared/data --threads 1
"""
from .ch14_common import add_dpo_flags, base_parser, dpo, dpo_data, dpo_steps, note_sample, sft_adapter, start
from nanoft import evaluate_preferences
from nanoft.cli.flags import list_of, positive_float, run_main
from nanoft.cli.report import print_table, save_rows


def build_parser():
    p = base_parser("ch14_dpo_beta", __doc__, test_records=55)
    add_dpo_flags(p)
    p.add_argument("--betas", type=list_of(positive_float, "0.05,0.1,0.5"), default="0.05,0.1,0.5",
                   help="the betas to compare, comma-separated")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    run, setup = start(args)
    sft_model, sft_seconds, loaded = sft_adapter(setup, args, run)
    pairs = dpo_data(setup, args, sft_model)
    before = pairs["sft"]
    rows = [dict(model="SFT", beta=None, reward_acc=None, pref_acc=before["preference_accuracy"],
                 chosen_ppl=before["chosen_perplexity"], d_chosen=0.0, d_rejected=0.0,
                 seconds=sft_seconds)]
    print(f"SFT model: preference accuracy {rows[0]['pref_acc']:.1f}%, chosen perplexity {rows[0]['chosen_ppl']:.2f} "
          f"on {len(pairs['test'])} test pairs")
    for beta in args.betas:
        print(f"\n# DPO, beta {beta:g}: {args.dpo_steps} steps of {args.dpo_batch_size} pairs, lr {args.dpo_lr:g}"
              + (f", RPO weight {args.rpo:g}" if args.rpo else ""))
        model, result, seconds = dpo(setup, sft_model, pairs["train"], run, args, beta)
        steps = dpo_steps(result)
        test = evaluate_preferences(model, pairs["test"], beta=beta, pad_id=setup.pad)
        row = dict(model=f"DPO beta {beta:g}", beta=beta, reward_acc=test["reward_accuracy"],
                   pref_acc=test["preference_accuracy"], chosen_ppl=test["chosen_perplexity"],
                   d_chosen=test["chosen_reward"] / beta, d_rejected=test["rejected_reward"] / beta,
                   margin=test["reward_margin"], first_loss=steps[0]["loss"], last_loss=steps[-1]["loss"],
                   seconds=seconds)
        print(f"  -> DPO loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}; test: reward accuracy "
              f"{row['reward_acc']:.1f}%, preference accuracy {row['pref_acc']:.1f}%, chosen perplexity "
              f"{row['chosen_ppl']:.2f}; log p changed by {row['d_chosen']:+.2f} (chosen), {row['d_rejected']:+.2f} "
              f"(rejected); {seconds:.0f} s")
        rows.append(row)
        save_rows(rows, args.out_dir, "exercise_dpo_beta")  # on disk after every run: a Ctrl-C keeps them
    print_table(rows, [("model", "model", "{}"), ("reward acc %", "reward_acc", "{:.1f}"),
                       ("pref. acc %", "pref_acc", "{:.1f}"), ("chosen ppl", "chosen_ppl", "{:.2f}"),
                       ("d log p chosen", "d_chosen", "{:+.2f}"), ("d log p rejected", "d_rejected", "{:+.2f}"),
                       ("seconds", "seconds", "{:.0f}")])
    print(f"(test pairs: {len(pairs['test'])}; d log p: the mean change of the summed log-prob of a test answer from "
          f"the SFT model, reward / beta; SFT: {args.sft_steps} steps{', loaded' if loaded else ''})")
    note_sample(setup.data["sample"], pairs["sample"])
    print(f"Written: {save_rows(rows, args.out_dir, 'exercise_dpo_beta')}")
    return rows


if __name__ == "__main__":
    run_main(main)
