import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saekit.errors import DataError
from saekit.sources.synthetic import SyntheticSource
from saekit.sources.tensor import TensorSource, as_source
from saekit.types import ActivationSource


def indexed(n: int, d: int = 3) -> torch.Tensor:
    """Rows whose first column is the row index, so a batch tells which rows it holds."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def row_ids(source: TensorSource, batch_size: int, n_batches: int, *, seed: int = 0, start: int = 0) -> list[list[int]]:
    batches = itertools.islice(source.batches(batch_size, seed=seed, start=start), n_batches)
    return [b["default"].x[:, 0].long().tolist() for b in batches]


def test_each_epoch_is_a_permutation_when_the_batch_divides_n():
    ids = row_ids(TensorSource(indexed(10)), 5, 4)
    epoch0, epoch1 = ids[0] + ids[1], ids[2] + ids[3]
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # a new permutation per epoch
    assert epoch0 != list(range(10))  # shuffled


def test_a_batch_crossing_an_epoch_boundary_takes_the_end_of_one_and_the_start_of_the_next():
    source = TensorSource(indexed(10))
    stream = sum(row_ids(source, 4, 5), [])  # 20 positions = exactly two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    # With batch size 5 the same seed gives the same epoch permutations: only the cut differs.
    assert sum(row_ids(source, 5, 4), []) == stream


def test_fewer_rows_than_the_batch_size_spans_several_epochs():
    stream = sum(row_ids(TensorSource(indexed(3)), 8, 3), [])
    assert all(sorted(stream[i : i + 3]) == [0, 1, 2] for i in range(0, 24, 3))


def test_batches_are_deterministic_by_seed_and_resume_exactly():
    source = TensorSource(indexed(23))
    full = row_ids(source, 4, 15, seed=5)
    assert row_ids(TensorSource(indexed(23)), 4, 15, seed=5) == full
    assert row_ids(source, 4, 7, seed=5, start=8) == full[8:]
    assert row_ids(source, 4, 15, seed=6) != full


def test_sites_share_rows_and_outputs_are_float32():
    x = indexed(12).half()
    source = TensorSource({"a": x, "b": 2 * x})
    assert source.sites == ("a", "b")
    batch = next(source.batches(5, seed=0))
    assert batch["a"].x.dtype == torch.float32 and batch["a"].grad is None
    torch.testing.assert_close(batch["b"].x, 2 * batch["a"].x)


def test_iter_rows_reads_once_in_order():
    x = torch.randn(2, 5, 3)  # [batch, pos, d] is flattened to 10 rows
    source = TensorSource(x)
    assert source.n_rows == 10 and source.d_in("default") == 3
    chunks = list(source.iter_rows(4))
    assert [c.shape[0] for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat(chunks), x.reshape(10, 3))
    assert torch.equal(torch.cat(list(source.iter_rows(4, max_rows=6))), x.reshape(10, 3)[:6])


def test_iter_rows_needs_a_site_when_there_are_several():
    source = TensorSource({"a": torch.randn(4, 2), "b": torch.randn(4, 5)})
    with pytest.raises(DataError, match="several sites"):
        source.iter_rows(2)
    assert next(source.iter_rows(2, site="b")).shape == (2, 5)


def test_numpy_inputs_and_npy_files_give_the_same_batches(tmp_path: Path):
    x = indexed(17).numpy().astype(np.float16)
    path = tmp_path / "acts.npy"
    np.save(path, x)
    from_file, from_array = TensorSource(path, site="resid"), TensorSource(x, site="resid")
    assert from_file.sites == ("resid",)
    pairs = zip(itertools.islice(from_file.batches(6, seed=1), 5), itertools.islice(from_array.batches(6, seed=1), 5))
    for a, b in pairs:
        assert a["resid"].x.dtype == torch.float32
        assert torch.equal(a["resid"].x, b["resid"].x)
    resumed = next(from_file.batches(6, seed=1, start=3))["resid"].x
    assert torch.equal(resumed, list(itertools.islice(from_file.batches(6, seed=1), 4))[3]["resid"].x)
    assert torch.equal(torch.cat(list(from_file.iter_rows(5))), torch.from_numpy(x).float())


def test_safetensors_with_one_or_several_tensors(tmp_path: Path):
    one = tmp_path / "one.safetensors"
    save_file({"whatever": torch.randn(6, 4, dtype=torch.bfloat16)}, str(one))
    assert TensorSource(one).sites == ("default",)
    assert TensorSource(one, site="l3").sites == ("l3",)
    assert next(TensorSource(one).iter_rows(6)).dtype == torch.float32

    several = tmp_path / "several.safetensors"
    save_file({"l1": torch.randn(6, 4), "l2": torch.randn(2, 3, 8)}, str(several))
    source = TensorSource(several)
    assert set(source.sites) == {"l1", "l2"} and source.d_in("l2") == 8
    assert TensorSource(several, site="l2").sites == ("l2",)
    with pytest.raises(DataError, match="no tensor named 'l9'"):
        TensorSource(several, site="l9")

    ragged = tmp_path / "ragged.safetensors"
    save_file({"l1": torch.randn(6, 4), "l2": torch.randn(5, 4)}, str(ragged))
    with pytest.raises(DataError, match="same number of rows"):
        TensorSource(ragged)


def test_in_memory_nan_and_inf_are_counted_with_the_first_bad_row():
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    x[7, 0] = float("nan")
    x[8, 2] = float("inf")
    with pytest.raises(DataError, match=r"2 NaN and 1 inf value\(s\), first in row 3"):
        TensorSource(x)
    y = torch.randn(5, 2)
    y[4, 1] = -float("inf")
    with pytest.raises(DataError, match=r"0 NaN and 1 inf value\(s\), first in row 4"):
        TensorSource({"layer": y})


def test_memory_mapped_nan_is_reported_when_its_batch_is_read(tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    x[5, 2] = np.nan
    path = tmp_path / "bad.npy"
    np.save(path, x)
    source = TensorSource(path)  # not scanned up front: the file may be larger than memory
    with pytest.raises(DataError, match=re.escape(path.name) + ".*first in row 5"):
        list(source.iter_rows(4))
    with pytest.raises(DataError, match="first in row 5"):
        next(source.batches(8, seed=0))


def test_missing_file_names_the_path(tmp_path: Path):
    path = tmp_path / "nowhere.npy"
    with pytest.raises(DataError, match=re.escape(f"activation file {path} does not exist")):
        TensorSource(path)
    with pytest.raises(DataError, match="does not exist"):
        as_source(str(path))


def test_unsupported_extension(tmp_path: Path):
    path = tmp_path / "acts.pt"
    torch.save(torch.randn(3, 2), path)
    with pytest.raises(DataError, match=r"unsupported file type '\.pt'; supported: \.npy, \.safetensors"):
        TensorSource(path)


def test_pickled_npy_is_refused(tmp_path: Path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds pickled Python objects"):
        TensorSource(path)


def test_corrupt_files_are_data_errors(tmp_path: Path):
    npy, st = tmp_path / "junk.npy", tmp_path / "junk.safetensors"
    npy.write_bytes(b"not an array at all")
    st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="not a valid .npy file"):
        TensorSource(npy)
    with pytest.raises(DataError, match="junk.safetensors is truncated or corrupted"):
        TensorSource(st)


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.randn(5), r"2-D \[tokens, d\] or 3-D \[batch, pos, d\], got shape \(5,\)"),
        (torch.randn(2, 2, 2, 2), r"got shape \(2, 2, 2, 2\)"),
        (torch.randn(0, 4), r"no rows \(shape \(0, 4\)\)"),
        (torch.randn(4, 0), "width 0"),
        (torch.arange(6).reshape(3, 2), "floating point, got dtype torch.int64"),
        (np.zeros((3, 2), dtype=np.int32), "floating point, got dtype int32"),
    ],
)
def test_bad_shapes_and_dtypes(data, message):
    with pytest.raises(DataError, match=message):
        TensorSource(data)


def test_bad_npy_shape_is_caught_from_the_header(tmp_path: Path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros(7, dtype=np.float32))
    with pytest.raises(DataError, match=re.escape(f"{path.name}: activations must be 2-D")):
        TensorSource(path)


def test_read_only_numpy_arrays_are_accepted():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x.setflags(write=False)
    assert torch.equal(torch.cat(list(TensorSource(x).iter_rows(3))), torch.from_numpy(x.copy()))


def test_as_source_wraps_inputs_and_passes_sources_through(tmp_path: Path):
    path = tmp_path / "acts.npy"
    np.save(path, np.ones((4, 2), dtype=np.float32))
    assert isinstance(as_source(torch.randn(3, 2)), TensorSource)
    assert as_source(np.ones((3, 2), dtype=np.float32), site="s").sites == ("s",)
    assert as_source(str(path)).d_in("default") == 2
    assert as_source(path).n_rows == 4
    existing = TensorSource(torch.randn(3, 2))
    assert as_source(existing) is existing
    synthetic = SyntheticSource(d=4, n_features=8, mean_active=2.0)
    assert as_source(synthetic) is synthetic
    with pytest.raises(DataError, match="no site 'x'"):
        as_source(synthetic, site="x")
    with pytest.raises(TypeError, match="from a list"):
        as_source([[1.0, 2.0]])


def test_protocol_and_describe():
    source = TensorSource({"a": torch.randn(4, 2), "b": torch.randn(4, 3, dtype=torch.float16)})
    assert isinstance(source, ActivationSource)
    described = json.loads(json.dumps(source.describe()))
    assert described == {
        "kind": "tensor",
        "path": None,
        "rows": 4,
        "sites": {"a": {"d_in": 2, "dtype": "float32"}, "b": {"d_in": 3, "dtype": "float16"}},
    }


def test_invalid_batch_arguments():
    source = TensorSource(torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch_size"):
        source.batches(0, seed=0)
    with pytest.raises(ValueError, match="start"):
        source.batches(2, seed=0, start=-1)


def test_an_npy_header_claiming_terabytes_is_refused_from_the_header(tmp_path: Path):
    path = tmp_path / "claims.npy"
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)})
    with pytest.raises(DataError, match=r"claims.npy: the header declares shape \(1048576, 1048576\) of float32 \(4,398,046,511,104 bytes"):
        TensorSource(path)


def test_big_endian_activations_are_converted_exactly(tmp_path: Path):
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    path = tmp_path / "be.npy"
    np.save(path, rows.astype(">f4"))
    for data in (path, rows.astype(">f4"), {"a": rows.astype(">f8")}):
        source = TensorSource(data)
        batch = next(source.batches(6, seed=0))[source.sites[0]].x
        assert torch.equal(batch[batch[:, 0].argsort()], torch.from_numpy(rows))


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((3, 2), dtype=np.longdouble), r"got dtype float128 \(saekit reads float16, bfloat16, float32, float64\)"),
        (torch.ones(3, 2).to(torch.float8_e4m3fn), "got dtype torch.float8_e4m3fn"),
        (5, "activations: cannot read a int"),
    ],
)
def test_storage_saekit_cannot_compute_from_is_refused(data, message):
    with pytest.raises(DataError, match=message):
        TensorSource(data)


def test_a_path_that_is_no_file_is_named(tmp_path: Path):
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "loop.npy").symlink_to(tmp_path / "loop.npy")
    with pytest.raises(DataError, match="activation file .*dir.npy is a folder, not a file"):
        TensorSource(tmp_path / "dir.npy")
    with pytest.raises(DataError, match="activation file .*loop.npy cannot be opened: Too many levels of symbolic links"):
        TensorSource(tmp_path / "loop.npy")
