"""Multi-task learning: which task does the next batch come from? (n_i = number of batches of task i)

    proportional  p_i ∝ n_i           every batch equally likely, as if the data sets were concatenated:
                                      big tasks dominate
    temperature   p_i ∝ n_i ** (1/T)  T = 1 is proportional, large T tends to uniform: small tasks are seen more often
                                      (the sampling of multilingual BERT and T5)
    round_robin   one task after the other, equal shares whatever the sizes

    mixed = MultiTaskBatches({"sst2": sst2_features, "squad": squad_features}, batch_size=16, strategy="temperature")
    for task, batch in mixed:
        loss = model(task, batch)["loss"]     # nanoft.models.heads.MultiTaskModel
"""
import math
import random

from dataclasses import replace

from torch.utils.data import default_collate

from nanoft.training.train import train

STRATEGIES = ("proportional", "temperature", "round_robin")


def task_probabilities(sizes: dict, strategy="proportional", temperature=2.0) -> dict:
    """{task: probability that a batch comes from it}, from {task: number of batches}."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {STRATEGIES}")
    if not sizes:
        raise ValueError("no tasks given: pass {task name: data set (or number of batches)} with at least one task")
    for name, n in sizes.items():
        if n <= 0:
            raise ValueError(f"task {name!r} has no batches: give it some examples or leave it out")
    if strategy == "round_robin":
        return {name: 1 / len(sizes) for name in sizes}
    if strategy == "temperature" and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}: 1 is proportional, "
                         "larger flattens towards uniform")
    weights = {name: n ** (1 / temperature) if strategy == "temperature" else n for name, n in sizes.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def task_schedule(sizes: dict, strategy="proportional", temperature=2.0, num_steps=None, seed=0) -> list:
    """The task name of every step, num_steps long (default: all batches of all tasks, one epoch's worth)."""
    p = task_probabilities(sizes, strategy, temperature)
    num_steps = sum(sizes.values()) if num_steps is None else num_steps
    names = list(sizes)
    if strategy == "round_robin":
        return [names[i % len(names)] for i in range(num_steps)]
    return random.Random(seed).choices(names, weights=[p[n] for n in names], k=num_steps)


def exact_schedule(steps_per_task: dict, seed=0) -> list:
    """The task of every step, with exactly steps_per_task[t] steps of each task t, in a seeded random interleaving.
    For a fair comparison with single-task training: each task gets the very steps its own run had."""
    for name, n in steps_per_task.items():
        if n < 1:
            raise ValueError(f"task {name!r} has {n} steps: give each task at least one")
    schedule = [name for name, n in steps_per_task.items() for _ in range(n)]
    random.Random(seed).shuffle(schedule)
    return schedule


class MultiTaskBatches:
    """The mixed schedule as a list of (task, batch): iterate it, or index it (a map-style data set of batches).

    datasets: {task: map-style data set of examples}. batch_size and collate_fn: one for all, or a dict per task.
    Each task's examples are batched in a seeded shuffle; a task visited more often than it has batches starts a
    new shuffle, so oversampled small tasks repeat their data in a new order rather than the same batches."""

    def __init__(self, datasets: dict, batch_size, strategy="proportional", temperature=2.0, num_steps=None, seed=0,
                 collate_fn=None, schedule=None):
        self.datasets = datasets
        self.batch_size = batch_size if isinstance(batch_size, dict) else dict.fromkeys(datasets, batch_size)
        self.collate_fn = (collate_fn if isinstance(collate_fn, dict)
                           else dict.fromkeys(datasets, collate_fn or default_collate))
        sizes = {name: math.ceil(len(d) / self.batch_size[name]) for name, d in datasets.items()}
        # schedule: the task of every step given outright (e.g. exact_schedule), instead of drawn by strategy
        self.schedule = list(schedule) if schedule is not None else \
            task_schedule(sizes, strategy, temperature, num_steps, seed)
        unknown = set(self.schedule) - set(datasets)
        if unknown:
            raise ValueError(f"the schedule names tasks {sorted(unknown)} without data: give datasets for them")
        rng, todo = random.Random(seed + 1), {name: [] for name in datasets}
        self.plan = []  # (task, example indices of the batch)
        for name in self.schedule:
            if not todo[name]:
                order, bs = rng.sample(range(len(datasets[name])), len(datasets[name])), self.batch_size[name]
                todo[name] = [order[i:i + bs] for i in range(0, len(order), bs)][::-1]  # pop() takes the first
            self.plan.append((name, todo[name].pop()))

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        name, indices = self.plan[i]
        return name, self.collate_fn[name]([self.datasets[name][j] for j in indices])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def fine_tune_multitask(model, batches: "MultiTaskBatches", evaluators: dict, cfg, loss_weights=None):
    """nanoft's training loop on a mixed stream of batches: each step's batch comes from one task and is routed to
    that task's head (model(task, batch), a nanoft.models.heads.MultiTaskModel). evaluators: {task: fn(model) -> its
    validation metric, higher is better}; each evaluation logs val_<task> and their mean, val_mean, which picks the
    weights the model ends with. loss_weights: {task: weight}, 1 by default. The batches are already built, in the
    schedule's order: the loop takes them one per step, unshuffled."""
    weights = {t: 1.0 for t in batches.datasets} | dict(loss_weights or {})

    def loss_fn(m, batch):
        return weights[batch["task"]] * m(batch["task"], batch)["loss"]

    def evaluate(m):
        metrics = {f"val_{task}": float(fn(m)) for task, fn in evaluators.items()}
        return {**metrics, "val_mean": sum(metrics.values()) / len(metrics)}

    cfg = replace(cfg, metric="val_mean", mode="max", restore_best=True, batch_size=1, grad_accum_steps=1,
                  shuffle=False, max_steps=len(batches), epochs=None,
                  find_unused_parameters=True)  # under DDP: a step trains one head, the other gets no gradient
    return train(model, batches, loss_fn, cfg, eval_fn=evaluate,
                 collate_fn=lambda items: {"task": items[0][0], **items[0][1]})
