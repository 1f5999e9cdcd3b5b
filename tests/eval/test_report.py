import json

from saekit.eval.report import write_report


def test_report_folder_holds_results_table_plots_and_links(tmp_path, capsys):
    rows = [{"name": "a", "fvu": 0.25, "l0": 3}, {"name": "b|c", "fvu": 0.5, "l0": 7}]
    plot = tmp_path / "p.png"
    write_report(
        tmp_path, title="T", intro="Intro.", rows=rows, columns=["name", "fvu"], plots=[plot, None],
        links={"SAEs": tmp_path / "saes", "elsewhere": "/x/y"},
    )  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# T\n\nIntro.\n\n| name | fvu |\n|---|---|\n| a | 0.25 |\n| b\\|c | 0.5 |\n")
    assert "![p](p.png)" in report
    assert "- SAEs: [saes](saes)\n" in report and "- elsewhere: [/x/y](/x/y)\n" in report
    printed = capsys.readouterr().out
    assert f"plot: {plot}" in printed and f"report: {tmp_path / 'report.md'}" in printed
    assert f"SAEs: {tmp_path / 'saes'}" in printed


def test_no_plot_no_link(tmp_path, capsys):
    write_report(tmp_path, title="T", intro="I", rows=[{"name": "a"}], columns=["name"], plots=[None])
    assert "![" not in (tmp_path / "report.md").read_text()
    assert "plot:" not in capsys.readouterr().out
