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


def _call_log(names):
    log = []
    return log, {n: (lambda n=n: log.append(n)) for n in names}


@pytest.mark.parametrize("order,expected", [
    ("reverse", "abc" + "abc" + "cba" + "abc" + "cba"),
    ("rotate", "abc" + "abc" + "bca" + "cab" + "abc"),
    ("fixed", "abc" * 5),
])
def test_round_orders(order, expected):
    """The orders the benchmarks time in (benchmarks/common.py interleaved() is this loop):
    each timed round is one call of every contender; warm-up rounds in the given order."""
    log, calls = _call_log("abc")
    times = timing.interleaved_times(calls, repeats=4, warmup=1, order=order)
    assert "".join(log) == expected
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_shuffle_is_seeded_and_every_round_is_whole():
    rounds = []
    for seed in (3, 3, 4):
        log, calls = _call_log("abcde")
        timing.interleaved_times(calls, repeats=6, warmup=0, order="shuffle", seed=seed)
        chunks = ["".join(log[i:i + 5]) for i in range(0, 30, 5)]
        assert all(sorted(c) == list("abcde") for c in chunks)
        rounds.append(chunks)
    assert rounds[0] == rounds[1] and rounds[0] != rounds[2]


def test_the_clock_times_each_call_alone():
    ticks = iter(range(0, 1000, 5))
    times = timing.interleaved_times({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=2,
                                     clock=lambda: float(next(ticks)))
    assert times == {"a": [5.0] * 3, "b": [5.0] * 3}  # one clock read before and one after a call


def test_bad_order_and_empty_contenders():
    with pytest.raises(ValueError, match="order must be one of 'reverse', 'rotate', 'shuffle', 'fixed'"):
        timing.interleaved_times({"x": lambda: None}, 1, order="random")
    assert timing.interleaved_times({}, 2, order="rotate") == {}
    assert timing.interleaved_medians({}, 2) == {}
