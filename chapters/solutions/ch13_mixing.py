"""Chapter 13, exercise 4: how should a multi-task run mix its tasks? Temperature 1 (proportional to the number of
batches), temperature 2, and round-robin, on a small SST-2 (500 sentences) beside the chapter's SQuAD subset, so the
two tasks differ in size by ten times and the mixing decides how often the small one is seen.

    python -m chapters.solutions.ch13_mixing --data-dir ../shared/data
    python -m chapters.solutions.ch13_mixing --data-dir ../shared/data --sst2-train 4000   # the chapter's sizes
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from a clone, too

from chapters import ch13_language_understanding as ch13
from chapters.solutions import CH13_SMOKE, ch13_setup, print_table, save_rows, solution_parser, split_argv
from nanoft.mixing import task_probabilities, task_schedule

DEFAULTS = ["--sst2-train", "500"]  # ~16 SST-2 batches against ~170 SQuAD batches at the chapter's sizes
SMOKE = CH13_SMOKE + ["--sst2-train", "16"]  # unequal at the smoke size too


def build_parser():
    p = solution_parser(__doc__, "ch13_language_understanding.py")
    p.add_argument("--mixes", default="temperature:1,temperature:2,round_robin",
                   help="comma-separated strategies, a temperature after a colon")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="lr of every multi-task run (the middle of the chapter's sweep; pass its winner)")
    return p


def main(argv=None):
    own, chapter_argv = split_argv(build_parser(), argv, SMOKE, DEFAULTS)
    args, tok, encoder = ch13_setup(chapter_argv)
    sst2, squad_data = ch13.load_sst2(args, tok), ch13.load_squad(args, tok)
    sst2_steps = ch13.steps_for(args, args.sst2_steps, len(sst2["train"]), args.batch_size)
    squad_steps = ch13.steps_for(args, args.squad_steps, len(squad_data["train"]), args.squad_batch_size)
    sizes = {"sst2": math.ceil(len(sst2["train"]) / args.batch_size),
             "squad": math.ceil(len(squad_data["train"]) / args.squad_batch_size)}
    rows = []
    for mix in own.mixes.split(","):
        args.mix, _, t = mix.partition(":")
        args.temperature = float(t or 2.0)
        # the schedule multi_task will follow (same sizes, steps and seed): how many steps each task gets
        p = task_probabilities(sizes, args.mix, args.temperature)
        schedule = task_schedule(sizes, args.mix, args.temperature, sst2_steps + squad_steps, args.seed)
        model, seconds = ch13.multi_task(encoder, sst2, squad_data, args, own.lr, sst2_steps, squad_steps)
        scores = ch13.squad_scores(model, squad_data["eval_examples"], squad_data["eval"], args)
        rows.append(dict(mix=mix, sst2_batches=sizes["sst2"], squad_batches=sizes["squad"], p_sst2=p["sst2"],
                         sst2_steps=schedule.count("sst2"),
                         squad_steps=schedule.count("squad"), dev_acc=ch13.sst2_accuracy(model, sst2["dev"]),
                         em=scores["exact_match"], f1=scores["f1"], seconds=seconds))
    print_table(rows, [("mix", "mix", "{}"), ("p(sst2)", "p_sst2", "{:.2f}"), ("SST-2 steps", "sst2_steps", "{}"),
                       ("SQuAD steps", "squad_steps", "{}"), ("SST-2 dev acc", "dev_acc", "{:.1%}"),
                       ("SQuAD EM", "em", "{:.1f}"), ("SQuAD F1", "f1", "{:.1f}"), ("seconds", "seconds", "{:.0f}")])
    print(f"(task sizes in batches: {sizes}; {sst2['label']}; {squad_data['label']})")
    save_rows(rows, args.out_dir, "exercise_mixing")
    return rows


if __name__ == "__main__":
    main()
