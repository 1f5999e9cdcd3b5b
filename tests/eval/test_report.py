import json

from saekit.eval.report import write_report


def test_report_folder_holds_results_table_and_plot_link(tmp_path, capsys):
    rows = [{"name": "a", "fvu": 0.25, "l0": 3}, {"name": "b|c", "fvu": 0.5, "l0": 7}]
    plot = tmp_path / "p.png"
    write_report(tmp_path, title="T", intro="Intro.", rows=rows, columns=["name", "fvu"], plot=plot, suite=tmp_path / "saes")
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# T\n\nIntro.\n\n| name | fvu |\n|---|---|\n| a | 0.25 |\n| b\\|c | 0.5 |\n")
    assert "![T](p.png)" in report
    printed = capsys.readouterr().out
    assert f"plot: {plot}" in printed and f"report: {tmp_path / 'report.md'}" in printed


def test_no_plot_no_link(tmp_path, capsys):
    write_report(tmp_path, title="T", intro="I", rows=[{"name": "a"}], columns=["name"], plot=None, suite=tmp_path)
    assert "![" not in (tmp_path / "report.md").read_text()
    assert "plot:" not in capsys.readouterr().out
