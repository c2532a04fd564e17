"""Cost benchmark orchestration: alternation, ratio of medians, optional prediction (workers faked)."""
import pytest

from nnunet_stipple.benchmarks import cost

TRAIN = {"plain": [10.0, 14.0, 11.0], "stipple": [10.5, 30.0, 11.5]}   # one outlier per method
PREDICT = {"plain": [4.0, 5.0, 6.0], "stipple": [4.4, 5.5, 6.6]}


@pytest.fixture
def fake_workers(monkeypatch):
    calls = []

    def worker(kind, method, args):
        calls.append((kind, method))
        k = sum(1 for c in calls if c == (kind, method)) - 1
        if kind == "training":
            return {"seconds_per_iteration": TRAIN[method][k], "peak_memory_mb": 100.0 + k}
        if kind == "prediction":
            return {"seconds_per_case": PREDICT[method][k], "peak_memory_mb": 50.0,
                    "positioning_seconds": [0.2, None] if method == "stipple" else [None, None]}
        return {"read_labels_seconds": 0.1, "build_seconds": 0.5, "training_cases": 4}

    monkeypatch.setattr(cost, "_run_worker", worker)
    monkeypatch.setattr(cost, "machine_description", lambda device="cpu": {"device": device})
    return calls


@pytest.mark.parametrize("num_cases, predicts", [(2, True), (0, False)])
def test_ratio_of_medians_and_alternation(fake_workers, num_cases, predicts):
    res = cost.run_cost_benchmark("Dataset999_X", "3d_fullres", repeats=3, num_cases=num_cases, log=lambda m: None)
    s = res["summary"]
    assert s["train_seconds_per_iteration"] == {"plain": 11.0, "stipple": 11.5}
    assert s["train_ratio"] == pytest.approx(11.5 / 11.0)
    assert s["train_peak_memory_mb"] == {"plain": 102.0, "stipple": 102.0}
    kinds = [c for c in fake_workers if c[0] != "prior"]
    per_repeat = 4 if predicts else 2
    assert len(kinds) == 3 * per_repeat
    assert kinds[:2] == [("training", "plain"), ("training", "stipple")]   # plain and STIPPLE alternate
    text = cost.format_summary(res)
    if predicts:
        assert s["predict_ratio"] == pytest.approx(5.5 / 5.0)
        assert s["positioning_seconds_per_case"] == 0.2
        assert "prediction s / case" in text
    else:
        assert "predict_ratio" not in s
        assert "not measured" in text
    assert "prior build: 0.50 s for 4 cases" in text
