"""The HTML pages, as pure functions of the browser data. All markup is made by the templates of
:mod:`saekit.browser.fmt`, which escape every value put into them (names, numbers, token strings,
anything read from a file), so no value can add a tag or an attribute. The one script is a constant,
allowed by its hash in the page's CSP: even a string that escaped escaping could not run. No data is
ever put inside a ``<script>`` or ``<style>`` element.

URL layout (the same for the server and the static export, so every link is relative):

    index.html                      suite overview
    <sae>/index.html                sortable, searchable latent list
    <sae>/latent.html#<id>          the one latent page: its script renders any latent from the SAE's
                                    store files beside it (:mod:`saekit.browser.page_data`)

The explanations of ``saekit interpret``, when an SAE has them, show on its latent page and as a
column of its latent list (:mod:`saekit.browser.explained`).
"""

from __future__ import annotations

import base64
import hashlib

from saekit.browser.explained import explanation_cell
from saekit.browser.fmt import Html, html, join, num, percent, token_text, url_part
from saekit.browser.latent_script import LATENT_SCRIPT
from saekit.browser.live_script import LIVE_SCRIPT
from saekit.browser.search import top_tokens
from saekit.browser.store import SaeData

SCRIPT = Html("""(function () {
  var table = document.getElementById('latents');
  if (!table) return;
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var box = document.getElementById('q'), shown = document.getElementById('count');
  function filter() {
    var q = box.value.toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
      r.hidden = !hit; if (hit) n++;
    });
    shown.textContent = n + ' of ' + rows.length + ' latents';
  }
  box.addEventListener('input', filter);
  var given = new URLSearchParams(location.search).get('q');
  if (given) box.value = given;
  filter();
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('data-dir') === 'desc';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      var numeric = th.getAttribute('data-type') === 'num';
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();""")
"""The pages' one script: the latent list's search and the sortable tables."""


def _sha(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
    f"script-src {_sha(SCRIPT)} {_sha(LATENT_SCRIPT)} {_sha(LIVE_SCRIPT)}; base-uri 'none'; form-action 'none'"
)
"""Content-Security-Policy of every page: nothing loads from elsewhere (the latent and live pages fetch
from their own origin), only our own scripts run."""

_STYLE = Html("""
body{font:14px/1.45 system-ui,sans-serif;margin:1.2em 2em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
nav{color:#666;margin-bottom:.5em}nav a{margin-right:.3em}
table{border-collapse:collapse}th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6;cursor:pointer;user-select:none}th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.facts{color:#444}.panels{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
.ex{display:flex;gap:.8em;margin:1px 0;font-family:ui-monospace,monospace;font-size:13px}
.val{width:5em;text-align:right;color:#666;flex:none}.ctx{white-space:pre-wrap;word-break:break-all}
.ctx span{border-radius:2px}.c{outline:1px solid #333}.off{color:#aaa}.error{color:#b00}
.tok{font-family:ui-monospace,monospace;white-space:pre;background:#f3f3f3;padding:0 3px;border-radius:2px}
input#q{font-size:1em;padding:3px 6px;width:22em}
.boards{display:flex;flex-wrap:wrap;gap:1.2em}figure.board{margin:0}figure.board figcaption{font-size:12px;color:#444;max-width:226px}
""")


def _page(title: str, body: Html, *, script: Html | None = None) -> str:
    return html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title}</title><style>{style}</style></head><body>{body}{js}</body></html>",
        csp=CSP, title=title, style=_STYLE, body=body, js=html("<script>{}</script>", script) if script else Html(),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Overview

_OVERVIEW_COLUMNS = [
    ("SAE", "text"), ("architecture", "text"), ("site", "text"), ("latents", "num"), ("hyper-parameters", "text"),
    ("L0 (sample)", "num"), ("never fired (sample)", "num"),
]  # fmt: skip


def overview_page(title: str, saes: dict[str, SaeData]) -> str:
    metric_keys = sorted({k for d in saes.values() for k in d.info.metrics})
    head = join(html('<th data-type="{}">{}</th>', t, h) for h, t in _OVERVIEW_COLUMNS + [(k, "num") for k in metric_keys])
    rows = []
    for name, d in saes.items():
        info, sample = d.info, d.info.sample
        cells = [
            html('<td data-v="{name}"><a href="{url}/index.html">{name}</a></td>', name=name, url=url_part(name)),
            _text_cell(info.architecture),
            _text_cell(info.site),
            _num_cell(info.d_sae),
            _text_cell(", ".join(f"{k}={v}" for k, v in info.hparams.items())),
            _num_cell(sample.l0),
            _num_cell(sample.dead_fraction, percent(sample.dead_fraction)),
        ] + [_num_cell(info.metrics.get(k)) for k in metric_keys]
        rows.append(html("<tr>{}</tr>", join(cells)))
    by_site: dict[str, list[str]] = {}
    for name, d in saes.items():
        by_site.setdefault(d.info.site, []).append(name)
    sites = join(
        html("<li>{}: {}</li>", site, join((html('<a href="{}/index.html">{}</a>', url_part(n), n) for n in names), ", "))
        for site, names in by_site.items()
    )
    first = next(iter(saes.values()), None)
    facts = Html()
    if first is not None:
        s = first.info.sample
        facts = html(
            '<p class="facts">Sample: {s.tokens:,} tokens of <b>{s.corpus}</b> ({s.split} split), {s.contexts:,} contexts '
            "of {s.context_size} tokens, the first {s.skip_positions} positions of each left out; model {model}.</p>",
            s=s, model=first.info.model or "?",
        )  # fmt: skip
    body = html(
        '<h1>{title}</h1>{facts}<h2>Sites</h2><ul>{sites}</ul><h2>SAEs</h2><table id="latents"><thead><tr>{head}</tr>'
        '</thead><tbody>{rows}</tbody></table><p class="facts">Click a column to sort. "train" metrics come from each '
        "SAE's provenance.json, \"eval\" metrics from a results.json beside the suite; \"sample\" numbers from the "
        'tokens above.</p><p hidden><input id="q"><span id="count"></span></p>',
        title=title, facts=facts, sites=sites, head=head, rows=join(rows),
    )  # fmt: skip
    return _page(title, body, script=SCRIPT)


# ---------------------------------------------------------------------------------------------
# Latent list


def _tokens(words: list[str]) -> Html:
    return join((html('<span class="tok">{}</span>', token_text(w)) for w in words), " ")


def latent_list_page(title: str, d: SaeData) -> str:
    stats = d.stats
    tops = top_tokens(d)
    density = stats.density.tolist()
    max_act = stats.max_act.tolist()
    mean_act = (stats.act_sum / stats.fire_count.clamp(min=1)).tolist()
    promoted = d.effects.promoted_ids[:, :3].tolist() if d.effects is not None else None
    rows = []
    for i in range(len(density)):
        common = tops[i]
        shown = join((html('<span class="tok">{}</span>×{}', token_text(t.text), t.count) for t in common), " ")
        cells = [
            html('<td class="n" data-v="{0}"><a href="latent.html#{0}">{0}</a></td>', i),
            _num_cell(density[i], percent(density[i])),
            _num_cell(max_act[i]),
            _num_cell(mean_act[i]),
            html('<td data-v="{}">{}</td>', " ".join(t.text for t in common), shown),
        ]
        if promoted is not None:
            words = [d.vocab.get(t, "?") for t in promoted[i]]
            cells.append(html('<td data-v="{}">{}</td>', " ".join(words), _tokens(words)))
        if d.explanations is not None:
            cells.append(explanation_cell(d.explanations, i))
        rows.append(html("<tr>{}</tr>", join(cells)))
    heads = [("latent", "num"), ("density", "num"), ("max act", "num"), ("mean act (firing)", "num"), ("top tokens", "text")]
    if promoted is not None:
        heads.append(("promotes", "text"))
    if d.explanations is not None:
        heads.append(("explanation", "text"))
    info, sample = d.info, d.info.sample
    body = html(
        '<nav><a href="../index.html">{title}</a> › {name}</nav><h1>{name}</h1><p class="facts">{arch} SAE at {site}, '
        "{d_sae:,} latents; L0 {l0} and {dead} never fired on {tokens:,} sample tokens.</p>"
        '<p><input id="q" type="search" placeholder="search tokens or latent ids" autofocus> <span id="count"></span></p>'
        '<table id="latents"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>',
        title=title, name=d.name, arch=info.architecture, site=info.site, d_sae=info.d_sae, l0=num(sample.l0),
        dead=percent(sample.dead_fraction), tokens=sample.tokens, rows=join(rows),
        head=join(html('<th data-type="{}">{}</th>', t, h) for h, t in heads),
    )  # fmt: skip
    return _page(f"{d.name} · latents", body, script=SCRIPT)


# ---------------------------------------------------------------------------------------------
# One latent


def latent_page(title: str, d: SaeData) -> str:
    """The one latent page of an SAE: its script renders the latent named after ``#`` from the store."""
    body = html(
        '<main id="latent"><nav><a href="../index.html">{title}</a> › <a href="index.html">{name}</a></nav>'
        '<p class="facts">loading…</p></main>',
        title=title, name=d.name,
    )  # fmt: skip
    return _page(f"{d.name} · latent", body, script=LATENT_SCRIPT)


def _num_cell(value: float | int | None, shown: str | None = None) -> Html:
    """A right-aligned number, sorted by its value (missing: first in ascending order)."""
    v = "-Infinity" if value is None else repr(float(value))
    return html('<td class="n" data-v="{}">{}</td>', v, shown if shown is not None else num(value))


def _text_cell(value: str) -> Html:
    return html('<td data-v="{0}">{0}</td>', value)


def live_page(title: str, saes: list[str], max_chars: int) -> str:
    """The local server's live page: a text, run through the model, with the latents on each token."""
    options = join(html('<option value="{0}">{0}</option>', name) for name in saes)
    body = html(
        '<nav><a href="index.html">{title}</a> › live</nav><h1>Which latents fire on a text</h1>'
        '<form id="live"><p><select id="sae">{options}</select> <button type="submit">run</button> '
        '<span id="state" class="facts"></span></p><p><textarea id="text" rows="4" cols="90" maxlength="{max_chars}" '
        'placeholder="type a text"></textarea></p></form><p id="tokens" class="ctx"></p><div id="detail"></div>',
        title=title, options=options, max_chars=max_chars,
    )  # fmt: skip
    return _page(f"{title} · live", body, script=LIVE_SCRIPT)
