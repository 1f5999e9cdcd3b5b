"""The compiled per-row top-k against torch.topk, its fallbacks, and that it runs only inside a
training run (outside, nothing is compiled and no thread is started)."""

from __future__ import annotations

import shutil

import pytest
import torch

from saekit._fast import kernels, row_topk, training_fast_paths


@pytest.fixture(autouse=True)
def inside_a_training_run(request):
    if "outside" in request.node.name:
        yield
        return
    with training_fast_paths(torch.device("cpu")):
        yield


def reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def test_the_kernel_is_built_where_a_c_compiler_exists():
    # Otherwise every other test here would only exercise the torch fallback.
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.available()


@pytest.mark.parametrize(
    ("shape", "k"),
    [
        ((300, 4608), 32),  # the suite's shape, per row
        ((70, 4600), 7),  # columns not a multiple of the group size: an ungrouped tail
        ((40, 18432), 64),
        ((25, 37), 5),  # fewer groups than k: every entry a candidate
        ((9, 64), 64),  # k = all columns
        ((11, 500), 1),
        ((1, 16), 3),
    ],
)
def test_the_same_columns_as_torch_topk(shape, k):
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
    assert torch.equal(row_topk(scores, k), reference(scores, k))


def test_several_threads_give_the_single_thread_result(monkeypatch):
    scores = torch.randn(1000, 2048, generator=torch.Generator().manual_seed(0))
    expected = reference(scores, 32)
    monkeypatch.setattr(kernels, "_PARALLEL_MIN_ENTRIES", 1)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.equal(row_topk(scores, 32), expected)
    finally:
        torch.set_num_threads(threads)


def test_ties_keep_the_largest_values():
    # Three distinct values, so a row's k-th largest is tied with hundreds of entries.
    scores = torch.randint(0, 3, (64, 4608), generator=torch.Generator().manual_seed(1)).float()
    chosen = row_topk(scores, 32)
    assert chosen.unique_consecutive(dim=-1).shape == chosen.shape  # no column twice
    assert torch.equal(scores.gather(-1, chosen).sort(-1).values, scores.topk(32, dim=-1).values.sort(-1).values)


def test_rows_whose_values_differ_in_the_last_bits_or_are_all_negative():
    # The k-th largest is bisected between a row's smallest and largest key: ranges of a few bits,
    # and keys all below the sign boundary, must give the same values as torch.topk.
    g = torch.Generator().manual_seed(2)
    close = 1 + torch.randint(0, 50, (50, 4608), generator=g).float() * 2**-23
    negative = -1 - torch.rand(50, 4608, generator=g)
    signed_zeros = torch.randint(0, 2, (50, 4608), generator=g).float() * -0.0
    for scores in (close, negative, signed_zeros):
        chosen = row_topk(scores, 32)
        assert chosen.unique_consecutive(dim=-1).shape == chosen.shape
        assert torch.equal(scores.gather(-1, chosen).sort(-1).values, scores.topk(32, dim=-1).values.sort(-1).values)


def test_rows_of_one_value_and_infinities():
    scores = torch.zeros(8, 4608)
    assert torch.equal(scores.gather(-1, row_topk(scores, 32)), torch.zeros(8, 32))
    scores = torch.randn(6, 4608, generator=torch.Generator().manual_seed(2))
    scores[0, 100] = float("inf")
    scores[1, :] = float("-inf")
    scores[1, 4000:4032] = 0.0
    scores[2, ::2] = -0.0
    chosen = row_topk(scores, 32)
    assert 100 in chosen[0].tolist()
    assert chosen[1].tolist() == list(range(4000, 4032))
    assert torch.equal(scores.gather(-1, chosen).sort(-1).values, scores.topk(32, dim=-1).values.sort(-1).values)


def test_nan_rows_follow_torch():
    # The kernel refuses NaN, so torch.topk's rule (NaN counts as the largest) decides.
    for n_cols, column in ((4608, 123), (4600, 4599)):  # 4599: in the ungrouped tail
        scores = torch.randn(50, n_cols, generator=torch.Generator().manual_seed(3))
        scores[7, column] = float("nan")
        assert torch.equal(row_topk(scores, 32), reference(scores, 32))
        assert column in row_topk(scores, 32)[7].tolist()


def test_other_dtypes_and_layouts_fall_back_to_torch():
    scores = torch.randn(20, 300, generator=torch.Generator().manual_seed(4))
    assert torch.equal(row_topk(scores.double(), 10), reference(scores.double(), 10))
    transposed = scores.t().contiguous().t()  # same values, column-major
    assert torch.equal(row_topk(transposed, 10), reference(scores, 10))
    assert row_topk(scores[:0], 10).shape == (0, 10)


def test_without_the_library_torch_runs(monkeypatch):
    monkeypatch.setattr(kernels, "_load", lambda: None)
    scores = torch.randn(20, 300, generator=torch.Generator().manual_seed(5))
    assert torch.equal(row_topk(scores, 10), reference(scores, 10))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k=0"):
        row_topk(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match="2-d"):
        row_topk(torch.randn(3), 1)


def test_the_library_is_built_once_and_atomically(tmp_path, monkeypatch):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    assert kernels.available()
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary file left behind
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_compile", lambda target: pytest.fail("compiled a second time"))
    assert kernels.available()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SAEKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_library", None)
    assert not kernels.available()


def test_a_forked_child_gets_a_pool_of_its_own(monkeypatch):
    # The parent's pool exists; in a child it has no threads, so reusing it would hang forever.
    import multiprocessing

    monkeypatch.setattr(kernels, "_PARALLEL_MIN_ENTRIES", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scores = torch.randn(64, 256, generator=torch.Generator().manual_seed(6))
        expected = row_topk(scores, 8)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_child_topk, (scores,)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, expected)


def _child_topk(scores: torch.Tensor) -> torch.Tensor:
    torch.set_num_threads(2)
    kernels._PARALLEL_MIN_ENTRIES = 1
    with training_fast_paths(torch.device("cpu")):
        return row_topk(scores, 8)


def test_outside_a_training_run_nothing_is_compiled_or_started(monkeypatch):
    monkeypatch.setattr(kernels, "_load", lambda: pytest.fail("the kernel library was loaded outside a run"))
    monkeypatch.setattr(kernels, "_executor", lambda threads: pytest.fail("a thread pool was started outside a run"))
    scores = torch.randn(300, 4608, generator=torch.Generator().manual_seed(7))
    assert torch.equal(row_topk(scores, 32), reference(scores, 32))


def test_the_pool_is_shut_down_when_the_run_ends_outside(monkeypatch):
    monkeypatch.setattr(kernels, "_PARALLEL_MIN_ENTRIES", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with training_fast_paths(torch.device("cpu")):
            row_topk(torch.randn(64, 256), 8)
        assert kernels._pool is None
    finally:
        torch.set_num_threads(threads)
