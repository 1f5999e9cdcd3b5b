import importlib.util
import json

import pytest
from write_faults import file_size_limit

from saekit.errors import ArtifactError, ConfigError
from saekit.training.logs import MetricsLog


def _lines(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "sae": 0, "mse": 0.5}) + "\n" for s in steps)


def test_a_fresh_run_replaces_an_old_log_without_reading_it(tmp_path):
    """A torn or damaged log of an earlier run must not stop a fresh run in the same folder."""
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "sae": 0}\n\xff\xfe not json\n{"step": 2, "ms')
    log = MetricsLog(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    log.write([{"step": 1, "sae": 0, "name": "00-topk", "mse": 0.25}])
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["mse"] == 0.25


def test_resume_keeps_the_lines_up_to_its_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(_lines(1, 2, 3, 4))
    MetricsLog(tmp_path, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == _lines(1, 2)


@pytest.mark.parametrize("torn", [b'{"step": 5, "sae": 0, "ms', b"{", b"\xe2\x82", b"\0\0\0\0"])
def test_resume_drops_an_unfinished_last_line_with_a_warning(tmp_path, torn):
    """The line being written when the run died (or the zeros a crash leaves at a file's end)."""
    (tmp_path / "metrics.jsonl").write_bytes(_lines(1, 2).encode() + torn)
    with pytest.warns(UserWarning, match=rf"metrics.jsonl: dropped its unfinished last line \({len(torn)} bytes\)"):
        MetricsLog(tmp_path, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == _lines(1, 2)


@pytest.mark.parametrize(
    "damaged",
    [b'{"step": 2, "sae": 0, "ms', b"[2]", b'{"sae": 0}', b'{"step": "2"}', b'{"step": true}', b"\xff\xfe"],
)
def test_a_damaged_line_inside_the_log_is_named_and_the_log_kept(tmp_path, damaged):
    """Only the last line can be cut off by a crash; a bad line before it was damaged afterwards, and
    a resume that dropped it would lose it for good when it rewrites the file."""
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(_lines(1).encode() + damaged + b"\n" + _lines(3).encode())
    before = log.read_bytes()
    with pytest.raises(ArtifactError, match=r"metrics.jsonl, line 2: not a metrics record .* repair or delete that line"):
        MetricsLog(tmp_path, resume_step=3)
    assert log.read_bytes() == before


def test_a_folder_where_the_log_goes_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(ArtifactError, match="cannot read the metrics log .*metrics.jsonl: Is a directory"):
        MetricsLog(tmp_path, resume_step=2)
    with pytest.raises(ArtifactError, match=r"cannot write .*metrics.jsonl: Is a directory \(EISDIR\)"):
        MetricsLog(tmp_path)


def test_missing_optional_loggers_are_named_before_the_log_is_touched(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    (tmp_path / "metrics.jsonl").write_text(_lines(1, 2, 3))
    with pytest.raises(ConfigError, match="wandb is not installed"):
        MetricsLog(tmp_path, resume_step=2, wandb_project="p")
    assert (tmp_path / "metrics.jsonl").read_text() == _lines(1, 2, 3)


def test_a_write_the_disk_refuses_is_named_and_leaves_no_fragment(tmp_path):
    log = MetricsLog(tmp_path)
    log.write([{"step": 1, "sae": 0, "name": "00-topk"}])
    before = (tmp_path / "metrics.jsonl").read_bytes()
    record = {"step": 2, "sae": 0, "name": "00-topk", "pad": "x" * 1000}
    with file_size_limit(len(before) + 100), pytest.raises(ArtifactError, match=r"cannot write .*metrics.jsonl: File too large \(EFBIG\)"):
        log.write([record])
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
