"""benchmarks/train_speed.py and benchmarks/peers.py: which cases --cases selects, which libraries run
each, the columns a case over several sites reads, how a group's records are merged into an earlier
bench-results.json, the held-out FVU of a transcoder's target, and the facts of when and where each case
ran that every record carries (machine, date, command, saekit's version and commit, load average)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peers  # noqa: E402
import train_speed  # noqa: E402

LIBRARIES = ["saekit", "sae_lens", "dictionary_learning"]


def names(chosen):
    return [c.name for c in chosen]


def test_the_default_set_has_no_new_architecture():
    assert names(train_speed.select_cases(None, 8)) == names(train_speed.cases(8))
    new = set(names(train_speed.new_architecture_cases(8)))
    assert not new & set(names(train_speed.select_cases(None, 8)))


def test_a_group_and_names_select_each_case_once_in_the_order_given():
    chosen = train_speed.select_cases("topk-4608,new-architectures,crosscoder-2sites-4608", 8)
    assert names(chosen) == ["topk-4608", *names(train_speed.new_architecture_cases(8))]
    assert train_speed.select_cases("none", 8) == []


def test_an_unknown_case_is_refused_by_name():
    with pytest.raises(SystemExit, match="unknown case 'matryoshka'.*new-architectures"):
        train_speed.select_cases("topk-4608,matryoshka", 8)


def test_only_the_libraries_that_train_an_architecture_run_it():
    by_name = {c.name: c for c in train_speed.new_architecture_cases(8)}
    assert peers.libraries_for(by_name["matryoshka_batch_topk-4608"], LIBRARIES) == LIBRARIES
    assert peers.libraries_for(by_name["batch_topk_2sites-4608"], LIBRARIES[::-1]) == LIBRARIES[::-1]
    for name in ("crosscoder-2sites-4608", "topk_transcoder-4608", "topk_skip_transcoder-4608", "topk_clt-2layers-4608"):
        assert peers.libraries_for(by_name[name], LIBRARIES) == ["saekit"]


def test_a_case_survives_its_json_with_tuples():
    case = {c.name: c for c in train_speed.new_architecture_cases(8)}["topk_clt-2layers-4608"]
    assert peers.Case.from_json(json.dumps(asdict(case))) == case
    assert case.n_columns == 4


def test_a_case_over_several_sites_reads_its_blocks_in_order():
    n, d = 5, 3
    together = np.stack([np.full((n, d), i, np.float32) for i in range(len(train_speed.SITES_TOGETHER))], 1).reshape(n, -1)
    single = np.zeros((n, d), np.float32)
    by_name = {c.name: c for c in train_speed.new_architecture_cases(8)}
    clt = train_speed.case_activations(by_name["topk_clt-2layers-4608"], single, together)
    index = train_speed.SITES_TOGETHER.index
    want = [index("layers.3.mlp_in"), index("layers.4.mlp_in"), index("layers.3.mlp_out"), index("layers.4.mlp_out")]
    assert clt[0].reshape(4, d)[:, 0].tolist() == want
    assert train_speed.case_activations(by_name["matryoshka_batch_topk-4608"], single, together) is single
    with pytest.raises(RuntimeError, match="crosscoder-2sites-4608 reads"):
        train_speed.case_activations(by_name["crosscoder-2sites-4608"], single, None)


def rec(case, library="saekit", **extra):
    return {"case": case, "library": library, **extra}


def test_merged_records_replace_their_cases_in_place_and_add_new_ones_before_the_suite():
    old = [rec("topk-4608"), rec("topk-4608", "sae_lens"), rec("jumprelu-4608"), rec("suite", repeats_seconds_total=[1.0])]
    new = [rec("jumprelu-4608", tokens_per_s=2.0), rec("crosscoder-2sites-4608")]
    merged = train_speed.merge_records(old, new)
    assert [(r["case"], r["library"]) for r in merged] == [
        ("topk-4608", "saekit"), ("topk-4608", "sae_lens"), ("jumprelu-4608", "saekit"),
        ("crosscoder-2sites-4608", "saekit"), ("suite", "saekit"),
    ]
    assert merged[2]["tokens_per_s"] == 2.0
    added = train_speed.merge_records(old, [rec("crosscoder-2sites-4608")])
    assert [r["case"] for r in added] == ["topk-4608", "topk-4608", "jumprelu-4608", "crosscoder-2sites-4608", "suite"]
    assert train_speed.merge_records([rec("a")], [rec("b")]) == [rec("a"), rec("b")]


def test_a_transcoders_fvu_is_of_its_target_with_the_skip_term():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = 2 * x
    fvu, l0 = peers.quality(lambda h: h, lambda h, f: 2 * f, x, y)
    assert fvu == pytest.approx(0.0, abs=1e-12) and l0 == 4
    fvu, _ = peers.quality(lambda h: h, lambda h, f: f, x, y)  # half of y: error (y/2)², FVU = E||y/2||² / Var
    assert fvu > 0.2
    assert peers.quality(lambda h: h, lambda h, f: f, x)[0] == pytest.approx(0.0, abs=1e-12)


def test_sparsify_runs_every_single_site_topk_case_and_nothing_else():
    every = train_speed.cases(32) + train_speed.new_architecture_cases(32)
    with_sparsify = [c.name for c in every if "sparsify" in peers.libraries_for(c, list(train_speed.LIBRARIES))]
    assert with_sparsify == ["topk-4608", "topk-16384", "topk-18432", "topk-65536"]


def test_the_wide_topk_cases_take_fewer_steps_with_some_timed():
    by_name = {c.name: c for c in train_speed.cases(32)}
    assert [by_name[f"topk-{d}"].steps for d in (4608, 16384, 18432, 65536)] == [32, 17, 17, 5]
    assert len(peers.step_seconds(list(range(by_name["topk-65536"].steps)))) == 2


def test_sparsifys_schedule_is_everyones():
    peer_sparsify = pytest.importorskip("peer_sparsify")
    from saekit.training.schedules import lr_factor

    case = peers.Case("t", "topk", 64, 40)
    warm, decay = peers.schedule(case)
    assert [peer_sparsify.lr_multiplier(case)(s) for s in range(40)] == [lr_factor(s, 40, warm, 0.2) for s in range(40)]


# --- when and where each case ran: the facts every record carries --------------------------------------


def measured(case, library="saekit", **extra):
    return rec(case, library, tokens_per_s=1000.0, peak_mem_mb=10.0, fvu=0.5, l0=32.0, seconds_total=1.0, **extra)


def test_the_cpu_is_named_from_cpuinfo_else_by_platform(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert train_speed.cpu_name(cpuinfo) == "Intel(R) Xeon(R) Processor"
    monkeypatch.setattr(train_speed.platform, "processor", lambda: "")
    monkeypatch.setattr(train_speed.platform, "machine", lambda: "aarch64")
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name, as on some ARM kernels
    assert train_speed.cpu_name(cpuinfo) == "aarch64"
    assert train_speed.cpu_name(tmp_path / "absent") == "aarch64"
    monkeypatch.setattr(train_speed.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(train_speed, "cpu_name", lambda: "Intel(R) Xeon(R) Processor")
    assert train_speed.machine("cpu") == "Intel(R) Xeon(R) Processor, 2 logical cores"


def test_the_command_is_the_scripts_with_its_arguments_quoted():
    assert train_speed.command_line(["--cases", "topk-4608", "--out", "my results.json"]) == (
        "python benchmarks/train_speed.py --cases topk-4608 --out 'my results.json'")
    assert train_speed.command_line([]) == "python benchmarks/train_speed.py"


def git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True)


def test_the_commit_is_short_and_dirty_only_for_changes_outside_the_benchmarks_outputs(tmp_path):
    assert train_speed.git_commit(tmp_path) == "unknown"  # not a checkout
    if shutil.which("git") is None:
        pytest.skip("no git")
    (tmp_path / "benchmarks").mkdir()
    for path in ("code.py", *train_speed.BENCHMARK_OUTPUTS):
        (tmp_path / path).write_text("1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert train_speed.git_commit(tmp_path) == head
    for path in train_speed.BENCHMARK_OUTPUTS:  # a run rewrites its outputs: still clean
        (tmp_path / path).write_text("2\n")
    (tmp_path / "untracked.py").write_text("")
    assert train_speed.git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("2\n")
    assert train_speed.git_commit(tmp_path) == head + "+dirty"


def test_saekits_version_names_the_checkouts_commit(monkeypatch):
    from saekit.version import __version__

    monkeypatch.setattr(train_speed, "git_commit", lambda root: "abc1234+dirty" if root == train_speed.ROOT else "?")
    assert train_speed.saekit_version() == f"{__version__} (git abc1234+dirty)"


def test_a_case_is_stamped_with_its_start_and_the_load_at_its_start_and_end(monkeypatch):
    loads = iter([(0.5, 0.4, 0.3), (1.5, 0.6, 0.4)])
    monkeypatch.setattr(train_speed.os, "getloadavg", lambda: next(loads))
    started = train_speed.case_start()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started[0])
    records = train_speed.stamped([measured("topk-4608"), measured("topk-4608", "sae_lens")], started)
    assert [(r["date"], r["load_average"]) for r in records] == [(started[0], [0.5, 1.5])] * 2

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(train_speed.os, "getloadavg", unavailable)
    assert train_speed.load_1min() is None


def test_repeated_passes_keep_the_first_start_and_the_last_end():
    passes = [measured("a", date="2026-12-06T10:00:00Z", load_average=[0.5, 0.7]),
              measured("a", date="2026-12-06T10:05:00Z", load_average=[0.9, 1.1])]
    assert train_speed.span(passes) == {"date": "2026-12-06T10:00:00Z", "load_average": [0.5, 1.1]}


def test_every_record_written_carries_when_and_where_its_case_ran_and_merging_keeps_old_cases_own(tmp_path):
    out = tmp_path / "bench-results.json"
    old = measured("jumprelu-4608", date="2026-12-01T08:00:00Z", machine="old machine", command="python old")
    out.write_text(json.dumps([old]))
    records = train_speed.stamped([measured("topk-4608"), measured("topk-4608", "sae_lens")], train_speed.case_start())
    args = argparse.Namespace(repeats=1, merge=True, out=str(out))
    run = train_speed.run_facts("cpu", ["--cases", "topk-4608", "--merge"])
    train_speed._finish(records, args, 1e11, "synthetic Gaussian", 0.0, run)
    written = json.loads(out.read_text())
    assert [r["case"] for r in written] == ["jumprelu-4608", "topk-4608", "topk-4608"]
    assert written[0] == old  # an earlier run's case keeps its own facts
    for new in written[1:]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", new["date"])
        assert new["machine"].endswith(" logical cores") and new["machine"] == train_speed.machine("cpu")
        assert new["command"] == "python benchmarks/train_speed.py --cases topk-4608 --merge"
        assert isinstance(new["saekit_version"], str) and " (git " in new["saekit_version"]
        assert len(new["load_average"]) == 2
        assert all(load is None or isinstance(load, float) for load in new["load_average"])


def test_the_passes_of_a_case_merge_into_medians_that_keep_how_r_was_timed():
    def run(tokens_per_s, date, load):
        return {"case": "topk-4608", "library": "saekit", "tokens_per_s": tokens_per_s, "peak_mem_mb": 400.0, "fvu": 0.4,
                "l0": 32.0, "floor_fraction": tokens_per_s / 1000, "step_seconds": [0.1], "seconds_total": 5.0,
                "tokens": 4096, "case_config": {"d_sae": 4608}, "d_in": 576, "matmul_gflops": tokens_per_s / 10,
                "matmul_output": train_speed.PREALLOCATED, "date": date, "load_average": load}

    merged = train_speed._merge([[run(300.0, "T1", [1.0, 1.5])], [run(100.0, "T2", [1.5, 2.0])], [run(200.0, "T3", [2.0, 2.5])]])
    assert len(merged) == 1
    rec = merged[0]
    assert (rec["tokens_per_s"], rec["floor_fraction"], rec["matmul_gflops"]) == (200.0, 0.2, 20.0)
    assert rec["matmul_output"] == "preallocated"  # results_md.py trusts the floor only then
    assert (rec["date"], rec["load_average"]) == ("T1", [1.0, 2.5])
