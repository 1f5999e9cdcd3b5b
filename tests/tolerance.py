"""Tolerances derived from the dtype's precision, for comparing two float computations of the same
quantity done in different orders (another batching, thread count or CPU kernel).

Such results differ by a few roundings of the *largest* magnitudes that flowed through the sums, not
of each element: an element near zero computed from large terms carries an absolute error of the
terms' size. The comparison is therefore norm-wise: |actual − expected| <= ulps · eps · max|expected|
for every element. ``ulps`` is the number of roundings allowed, about the depth of the computation
times a margin; measured errors of the tests that use this are 2-3 eps on every CPU capability
torch offers here (AVX-512, AVX2, none) and with 1 or 2 threads.
"""

import torch


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, *, ulps: float = 32) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    eps = torch.finfo(torch.promote_types(actual.dtype, expected.dtype)).eps
    scale = float(expected.abs().max())
    worst = float((actual.double() - expected.double()).abs().max())
    assert worst <= ulps * eps * scale, f"max |difference| {worst:.3g} > {ulps} eps x max|expected| = {ulps * eps * scale:.3g}"
