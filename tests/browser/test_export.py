"""The static export writes a whole folder at once and never replaces or deletes files it did not
write: only a new, empty or previously exported folder (recognised by its marker) is used."""

import dataclasses
import json

import pytest
from browser_helpers import tiny_browser, tiny_data

import saekit
from saekit.browser import Browser, export_site
from saekit.browser.export import MARKER
from saekit.cli.main import main
from saekit.errors import ArtifactError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SAE_FILES = ["index.html", "latent.html", "latents.bin", "page.json", "tokens.bin"]
PAGES = ["index.html", *(f"tiny/{f}" for f in SAE_FILES)]
"""What an export of tiny_browser holds: a handful of files per SAE, whatever its number of latents."""


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_a_new_folder_gets_every_page_and_the_marker(tmp_path):
    out = export_site(tiny_browser(tmp_path), tmp_path / "site")
    assert listing(out) == sorted([*PAGES, MARKER])
    assert json.loads((out / MARKER).read_text()) == {"format": 2, "saes": {"tiny": SAE_FILES}}
    assert no_leftovers(tmp_path)


def test_an_empty_folder_and_a_previous_export_are_replaced(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    export_site(tiny_browser(tmp_path, title="first"), out)
    export_site(tiny_browser(tmp_path, title="second"), out)
    assert "<h1>second</h1>" in (out / "index.html").read_text()
    other = Browser(tmp_path, "third", {"other": tiny_data(name="other", d_sae=3)})
    export_site(other, out)  # the files of an SAE no longer exported go with the old export
    assert listing(out) == sorted(["index.html", *(f"other/{f}" for f in SAE_FILES), MARKER])
    assert no_leftovers(tmp_path)


def test_a_folder_with_files_of_its_own_is_refused_untouched(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my page")
    with pytest.raises(ConfigError, match=f"export folder {out} is not empty and is not a saekit browser export") as caught:
        export_site(tiny_browser(tmp_path), out)
    assert f"(it has no {MARKER})" in str(caught.value) and "(index.html)" in str(caught.value)
    assert listing(out) == ["index.html"] and (out / "index.html").read_text() == "my page"
    assert no_leftovers(tmp_path)


@pytest.mark.parametrize("extra", ["notes.txt", "tiny/dynamics.bin", "tiny/latent/6.html", "other/index.html", ".DS_Store"])
def test_a_previous_export_with_files_added_is_refused_untouched(tmp_path, extra):
    out = export_site(tiny_browser(tmp_path), tmp_path / "site")
    before = {rel: (out / rel).read_bytes() for rel in listing(out)}
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("mine")
    with pytest.raises(ConfigError, match="also files that export did not write") as caught:
        export_site(tiny_browser(tmp_path, title="again"), out)
    assert extra in str(caught.value)
    assert all((out / rel).read_bytes() == data for rel, data in before.items())
    assert (out / extra).read_text() == "mine"


def test_a_file_a_link_or_a_bad_marker_is_refused(tmp_path):
    browser = tiny_browser(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        export_site(browser, tmp_path / "file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match=f"export folder {tmp_path / 'link'} is a symbolic link"):
        export_site(browser, tmp_path / "link")
    out = export_site(browser, tmp_path / "site")
    markers = [
        "{", json.dumps({"format": 2, "saes": {"../x": ["index.html"]}}), json.dumps({"format": 1, "saes": {"tiny": 6}}),
        json.dumps({"format": 2, "saes": {"tiny": ["../../notes.txt"]}}), json.dumps({"format": 2, "saes": {"tiny": "index.html"}}),
    ]  # fmt: skip
    for marker in markers:
        (out / MARKER).write_text(marker)
        with pytest.raises(ArtifactError, match=f"{out / MARKER} is not"):
            export_site(browser, out)
        assert listing(out) == sorted([*PAGES, MARKER])


def test_a_failed_export_leaves_the_previous_one_whole(tmp_path):
    out = export_site(tiny_browser(tmp_path, title="first"), tmp_path / "site")
    before = {rel: (out / rel).read_bytes() for rel in listing(out)}
    data = tiny_data()
    broken = dataclasses.replace(data, stats=dataclasses.replace(data.stats, top_rows=data.stats.top_rows + 10**6))
    with pytest.raises(IndexError):  # rendering fails at the latent list, after the overview page
        export_site(Browser(tmp_path, "second", {"tiny": broken}), out)
    assert {rel: (out / rel).read_bytes() for rel in listing(out)} == before
    assert no_leftovers(tmp_path)


def test_a_name_that_is_not_one_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'../x' cannot name a folder"):
        export_site(Browser(tmp_path, "t", {"../x": tiny_data()}), tmp_path / "site")
    assert not (tmp_path / "x").exists() and not (tmp_path / "site").exists()


def test_the_cli_refuses_before_computing_anything(tmp_path, capsys):
    sae = saekit.build_sae("relu", d_in=4, d_sae=8, seed=0)
    sae.metadata["site"] = "layers.0.resid_post"
    saekit.save_sae(sae, tmp_path / "sae")
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my page")
    # No such model: computing would fail on it; the export folder is refused first.
    argv = ["browse", str(tmp_path / "sae"), "--model", str(tmp_path / "no-model"), "--rebuild", "--export", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"export folder {out} is not empty" in err and "Traceback" not in err
    assert (out / "index.html").read_text() == "my page"
    assert not (tmp_path / "sae" / "browser-cache").exists()
