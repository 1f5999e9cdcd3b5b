"""Every page escapes every value it shows, whatever its type, and runs no script but its own; the
page modules make markup only through saekit.browser.fmt."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from browser_helpers import HOSTILE, RAW_MARKUP, tiny_data

import saekit.browser as browser_package
from saekit.browser.dynamics import Dynamics
from saekit.browser.latent_script import LATENT_SCRIPT
from saekit.browser.live_script import LIVE_SCRIPT
from saekit.browser.pages import SCRIPT, latent_list_page, latent_page, live_page, overview_page
from saekit.browser.store import SaeData

pytestmark = pytest.mark.usefixtures("one_thread")


def all_pages(title: str, data: SaeData) -> list[str]:
    pages = [overview_page(title, {data.name: data}), latent_list_page(title, data), latent_page(title, data)]
    return [*pages, live_page(title, [data.name], 100)]


def hostile_everywhere(data: SaeData) -> SaeData:
    """HOSTILE in every string the pages show, and in the numbers they print without formatting (as
    if a file had given strings for them: the types are not what protects a page)."""
    sample = dataclasses.replace(data.info.sample, corpus=HOSTILE, split=HOSTILE, context_size=HOSTILE, skip_positions=HOSTILE)
    info = dataclasses.replace(
        data.info, architecture=HOSTILE, site=HOSTILE, sample=sample, hparams={HOSTILE: HOSTILE},
        logit_effects=HOSTILE, model=HOSTILE, metrics={HOSTILE: 1.0},
    )  # fmt: skip
    return dataclasses.replace(
        data, name=HOSTILE, info=info, vocab=dict.fromkeys(data.vocab, HOSTILE), dynamics=hostile_dynamics(data.info.d_sae)
    )


def hostile_dynamics(d_sae: int) -> Dynamics:
    """Dynamics whose checkpoint labels, name and site are HOSTILE (every latent formed at the second)."""
    curve = torch.rand(3, d_sae, generator=torch.Generator().manual_seed(0))
    return Dynamics(
        folder=Path(HOSTILE), name=HOSTILE, site=HOSTILE, checkpoints=[HOSTILE, HOSTILE + "2", HOSTILE + "3"],
        steps=[None, 1, 2], drift_to_final=curve, progress_cosine=curve, progress_wjaccard=curve,
        formation=torch.ones(d_sae, dtype=torch.long), formed_fraction=0.5, token_purity=curve[0],
        alive=torch.ones(d_sae, dtype=torch.bool),
    )  # fmt: skip


def test_no_value_reaches_a_page_unescaped():
    pages = all_pages(HOSTILE, hostile_everywhere(tiny_data()))
    for page in pages:
        for raw in RAW_MARKUP:
            assert raw not in page
    escaped = "&lt;meta http-equiv=&quot;refresh&quot; content=&quot;0;url=http://evil&quot;&gt;"
    assert all(escaped in page for page in pages)
    assert pages[0].count(escaped) >= 9  # title, SAE, architecture, site, hyper-parameters, metric, corpus...
    assert pages[2].count(escaped) >= 3 and pages[3].count(escaped) >= 4  # the latent page's title and SAE; live's options


def test_each_page_runs_only_its_own_script():
    pages = all_pages(HOSTILE, hostile_everywhere(tiny_data()))
    for page, script in zip(pages, [SCRIPT, SCRIPT, LATENT_SCRIPT, LIVE_SCRIPT]):
        assert re.findall(r"<script[^>]*>(.*?)</script>", page, re.S) == [script]
        assert page.count("<script") == page.count("</script>") == 1


@pytest.mark.parametrize("script", [LATENT_SCRIPT, LIVE_SCRIPT])
def test_the_scripts_put_data_into_text_nodes_only(script):
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "srcdoc"):
        assert sink not in script
    assert "createTextNode" in script


def markup_outside_templates(source: str) -> list[int]:
    """Lines that build markup by f-string, ``+``, ``%`` or ``.format`` on a literal holding "<", or
    that wrap anything but a literal in Html."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            literals = [v.value for v in node.values if isinstance(v, ast.Constant)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            literals = [side.value for side in (node.left, node.right) if isinstance(side, ast.Constant)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            literals = [node.func.value.value] if isinstance(node.func.value, ast.Constant) else []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Html":
            found += [node.lineno] if any(not isinstance(a, ast.Constant) for a in node.args) else []
            continue
        else:
            continue
        if any(isinstance(text, str) and "<" in text for text in literals):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("module", ["pages.py", "explained.py"])
def test_page_modules_make_markup_only_through_templates(module):
    source = (Path(browser_package.__file__).parent / module).read_text(encoding="utf-8")
    assert markup_outside_templates(source) == []
    assert markup_outside_templates('x = f"<b>{name}</b>"\ny = "<i>" + name\nz = Html(name)\n') == [1, 2, 3]
