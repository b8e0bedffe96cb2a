"""Every entry point gives the same results at every kernel level this host has.

The same smoke run (tests/isa_smoke.py) is repeated by `make test-isa` on
emulated CPUs that lack the host's instructions; here it runs in-process at
each level the CPU supports and is compared with the best level.
"""
import isa_smoke
import pytest

from conftest import SUPPORTED, at_isa


@pytest.fixture(scope="module")
def best_results():
    return isa_smoke.run_all()


@pytest.mark.parametrize("level", SUPPORTED[:-1])
def test_levels_agree_with_the_best(level, best_results):
    with at_isa(level):
        results = isa_smoke.run_all()
    assert isa_smoke.compare(best_results, results) == []
    assert len(results) > 150  # every entry point contributed


def test_compare_reports_differences(best_results):
    changed = dict(best_results)
    key = next(k for k in changed if k.startswith("exact/int8_dynamic/linear_chain"))
    changed[key] = changed[key] + 1e-6
    problems = isa_smoke.compare(best_results, changed)
    assert len(problems) == 1 and key in problems[0]
