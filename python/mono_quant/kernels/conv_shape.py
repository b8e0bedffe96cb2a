"""A conv's output sizes: the one formula every conv route (eager, traced, fake) shares."""
from __future__ import annotations

__all__ = ["conv_out_sizes"]


def conv_out_sizes(sizes, kernel, stride, padding, dilation) -> list:
    """The output sizes of a conv over spatial ``sizes`` (ints, symbolic sizes or jit.trace's 0-d
    tensors: plain arithmetic, so no guard) with zero padding ``padding`` on each side, per dimension
    as torch's: floor((size + 2p - d(k - 1) - 1) / s) + 1; zero or less where no output fits."""
    return [(size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(sizes, kernel, stride, padding, dilation)]
