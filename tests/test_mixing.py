"""nanoft.recipes.mixing: task probabilities, seeded schedules, and the (task, batch) stream."""
import math
from collections import Counter

import pytest
import torch

from nanoft.recipes.mixing import MultiTaskBatches, task_probabilities, task_schedule

SIZES = {"sst2": 600, "squad": 300, "tiny": 100}


def test_probabilities():
    assert task_probabilities(SIZES, "proportional") == pytest.approx({"sst2": 0.6, "squad": 0.3, "tiny": 0.1})
    root = {k: math.sqrt(v) for k, v in SIZES.items()}
    expected = {k: r / sum(root.values()) for k, r in root.items()}
    assert task_probabilities(SIZES, "temperature", 2.0) == pytest.approx(expected)
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(task_probabilities(SIZES, "proportional"))
    flat = task_probabilities(SIZES, "temperature", 1000.0)
    assert max(flat.values()) - min(flat.values()) < 0.01  # large T tends to uniform
    assert task_probabilities(SIZES, "round_robin") == pytest.approx({k: 1 / 3 for k in SIZES})


@pytest.mark.parametrize("strategy,temperature", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 5.0)])
def test_empirical_frequencies(strategy, temperature):
    steps = 40_000
    counts = Counter(task_schedule(SIZES, strategy, temperature, num_steps=steps, seed=3))
    assert len(task_schedule(SIZES, strategy, temperature, seed=3)) == sum(SIZES.values())  # default: one epoch
    for task, p in task_probabilities(SIZES, strategy, temperature).items():
        assert abs(counts[task] / steps - p) < 0.01, (task, counts[task] / steps, p)


def test_round_robin_order():
    assert task_schedule(SIZES, "round_robin", num_steps=7) == ["sst2", "squad", "tiny"] * 2 + ["sst2"]


def test_determinism_by_seed():
    a = task_schedule(SIZES, "temperature", 2.0, num_steps=500, seed=1)
    assert a == task_schedule(SIZES, "temperature", 2.0, num_steps=500, seed=1)
    assert a != task_schedule(SIZES, "temperature", 2.0, num_steps=500, seed=2)
    data = {"a": [{"x": torch.tensor(i)} for i in range(20)], "b": [{"x": torch.tensor(100 + i)} for i in range(7)]}
    one = [(t, b["x"].tolist()) for t, b in MultiTaskBatches(data, 4, "proportional", seed=5)]
    two = [(t, b["x"].tolist()) for t, b in MultiTaskBatches(data, 4, "proportional", seed=5)]
    other = [(t, b["x"].tolist()) for t, b in MultiTaskBatches(data, 4, "proportional", seed=6)]
    assert one == two and one != other


def test_errors():
    with pytest.raises(ValueError, match="task 'b' has no batches"):
        task_schedule({"a": 3, "b": 0})
    with pytest.raises(ValueError, match="task 'b' has no batches"):
        MultiTaskBatches({"a": [{"x": torch.tensor(1)}], "b": []}, batch_size=2)
    with pytest.raises(ValueError, match="no tasks"):
        task_schedule({})
    with pytest.raises(ValueError, match="unknown strategy 'uniform'"):
        task_schedule(SIZES, "uniform")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        task_schedule(SIZES, "temperature", temperature=0)


def test_batches_cover_each_task_and_resample_small_ones():
    a = [{"x": torch.tensor(i), "y": torch.tensor(0)} for i in range(10)]
    b = [{"x": torch.tensor(100 + i), "y": torch.tensor(1)} for i in range(3)]
    mixed = MultiTaskBatches({"a": a, "b": b}, batch_size=2, strategy="round_robin", num_steps=12, seed=0)
    assert len(mixed) == 12
    items = list(mixed)
    assert [t for t, _ in items] == ["a", "b"] * 6
    assert all(t == "a" and (batch["y"] == 0).all() or t == "b" and (batch["y"] == 1).all() for t, batch in items)
    seen_a = [x for t, batch in items if t == "a" for x in batch["x"].tolist()]
    seen_b = [x for t, batch in items if t == "b" for x in batch["x"].tolist()]
    assert sorted(seen_a[:10]) == list(range(10))  # a first pass over all of task a, once each
    # task b (2 batches a pass) is visited 6 times: three passes, each covering all 3 examples in a new order
    passes = [sorted(seen_b[i:i + 3]) for i in range(0, 9, 3)]
    assert passes == [[100, 101, 102]] * 3
    assert len({tuple(seen_b[i:i + 3]) for i in range(0, 9, 3)}) > 1
    assert mixed[3][0] == "b" and torch.equal(mixed[3][1]["x"], items[3][1]["x"])  # indexable like a data set


def test_per_task_batch_size_and_collate():
    data = {"cls": [{"x": torch.tensor([i, i])} for i in range(8)], "span": [[i] for i in range(5)]}
    mixed = MultiTaskBatches(data, batch_size={"cls": 4, "span": 5}, strategy="proportional", seed=0,
                             collate_fn={"cls": lambda ex: torch.stack([e["x"] for e in ex]), "span": lambda ex: ex})
    assert len(mixed) == 2 + 1  # one epoch: 8 / 4 + 5 / 5 batches
    for task, batch in mixed:
        if task == "cls":
            assert batch.shape == (4, 2)
        else:
            assert sorted(batch) == [[i] for i in range(5)]


def test_exact_schedule_gives_each_task_exactly_its_steps():
    from nanoft.recipes.mixing import exact_schedule
    schedule = exact_schedule({"a": 30, "b": 5}, seed=1)
    assert schedule.count("a") == 30 and schedule.count("b") == 5
    assert schedule != sorted(schedule) and schedule == exact_schedule({"a": 30, "b": 5}, seed=1)
    with pytest.raises(ValueError, match="at least one"):
        exact_schedule({"a": 0})
    batches = MultiTaskBatches({"a": list(range(10)), "b": list(range(4))}, 2, schedule=schedule, seed=1)
    assert [t for t, _ in batches] == schedule
    with pytest.raises(ValueError, match="without data"):
        MultiTaskBatches({"a": list(range(10))}, 2, schedule=["a", "c"])
