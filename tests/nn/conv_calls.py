"""The dynamic conv's C calls made inside a block (kernels.dynamic_conv.profile), for the
route tests: which route a layer took is what they check."""
from contextlib import contextmanager

from mono_quant.kernels import dynamic_conv

__all__ = ["counting_conv_calls"]


@contextmanager
def counting_conv_calls():
    """``with counting_conv_calls() as counts:`` ... then ``counts["calls"]``,
    ``counts["direct_calls"]``: the block's calls only (the counters start at 0)."""
    counts = {}
    dynamic_conv.profile(True)
    dynamic_conv.profile()  # (reads and resets: earlier calls are not the block's)
    try:
        yield counts
    finally:
        counts.update(dynamic_conv.profile(False))
