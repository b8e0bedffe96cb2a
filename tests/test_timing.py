"""The timing loop ``mono-quant bench`` and the demo's speed table share
(mono_quant.timing): warm-up rounds, interleaved rounds alternating their order, medians
by name; never a wall-clock assertion (the calls' order and counts are checked)."""
import pytest

from mono_quant import timing


def test_rounds_interleave_and_alternate_their_order(monkeypatch):
    calls = []
    clock = iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    medians = timing.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                          "c": lambda: calls.append("c")}, repeats=3, warmup=2)
    assert calls == list("abc" * 2 + "abc" + "cba" + "abc")
    assert set(medians) == {"a", "b", "c"} and all(t == 1.0 for t in medians.values())  # one tick per call


def test_medians_and_bad_counts():
    assert timing.interleaved_medians({"x": lambda: None}, repeats=5, warmup=0)["x"] >= 0.0
    for repeats, warmup in ((0, 1), (1, -1)):
        with pytest.raises(ValueError, match="repeats must be at least 1 and warmup at least 0"):
            timing.interleaved_medians({"x": lambda: None}, repeats, warmup)
