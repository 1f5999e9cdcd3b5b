"""The HTML pages, as pure functions of the browser data. All markup is made by the templates of
:mod:`saekit.browser.fmt`, which escape every value put into them (names, numbers, token strings,
anything read from a file), so no value can add a tag or an attribute. The one script is a constant,
allowed by its hash in the page's CSP: even a string that escaped escaping could not run. No data is
ever put inside a ``<script>`` or ``<style>`` element.

URL layout (the same for the server and the static export, so every link is relative):

    index.html                      suite overview
    <sae>/index.html                sortable, searchable latent list
    <sae>/latent/<id>.html          one latent

The explanations of ``saekit interpret``, when an SAE has them, show on its latent pages and as a
column of its latent list (:mod:`saekit.browser.explained`).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter

import torch

from saekit.browser.explained import explanation_cell, explanation_section
from saekit.browser.fmt import Html, html, join, num, percent, token_text, url_part
from saekit.browser.stats import window_positions
from saekit.browser.store import SaeData
from saekit.browser.svg import Line, histogram_svg, line_chart_svg

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

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
"""Content-Security-Policy of every page: nothing loads from anywhere, only our own script runs."""

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
.ctx span{border-radius:2px}.c{outline:1px solid #333}.off{color:#aaa}
.tok{font-family:ui-monospace,monospace;white-space:pre;background:#f3f3f3;padding:0 3px;border-radius:2px}
input#q{font-size:1em;padding:3px 6px;width:22em}
""")


def _page(title: str, body: Html, *, script: bool = False) -> str:
    return html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title}</title><style>{style}</style></head><body>{body}{js}</body></html>",
        csp=CSP, title=title, style=_STYLE, body=body, js=html("<script>{}</script>", SCRIPT) if script else Html(),
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
    return _page(title, body, script=True)


# ---------------------------------------------------------------------------------------------
# Latent list


def _center_tokens(d: SaeData) -> torch.Tensor:
    """[L, top_n] token id at each top example (-1 where empty)."""
    rows = d.stats.top_rows
    per = d.layout.per_context
    flat = (rows.clamp(min=0) // per) * d.layout.context + rows.clamp(min=0) % per + d.layout.skip
    return torch.where(rows >= 0, d.tokens.flatten()[flat], -1)


def _tokens(words: list[str]) -> Html:
    return join((html('<span class="tok">{}</span>', token_text(w)) for w in words), " ")


def latent_list_page(title: str, d: SaeData) -> str:
    stats = d.stats
    centers = _center_tokens(d).tolist()
    density = stats.density.tolist()
    max_act = stats.max_act.tolist()
    mean_act = (stats.act_sum / stats.fire_count.clamp(min=1)).tolist()
    promoted = d.effects.promoted_ids[:, :3].tolist() if d.effects is not None else None
    rows = []
    for i in range(len(density)):
        common = Counter(t for t in centers[i] if t >= 0).most_common(3)
        tops = join((html('<span class="tok">{}</span>×{}', token_text(d.vocab.get(t, "?")), n) for t, n in common), " ")
        cells = [
            html('<td class="n" data-v="{0}"><a href="latent/{0}.html">{0}</a></td>', i),
            _num_cell(density[i], percent(density[i])),
            _num_cell(max_act[i]),
            _num_cell(mean_act[i]),
            html('<td data-v="{}">{}</td>', " ".join(d.vocab.get(t, "?") for t, _ in common), tops),
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
    return _page(f"{d.name} · latents", body, script=True)


# ---------------------------------------------------------------------------------------------
# One latent


def latent_page(title: str, d: SaeData, latent: int) -> str:
    s = d.stats
    n_latents = s.top_values.shape[0]
    max_act = float(s.max_act[latent])
    fired = int(s.fire_count[latent])
    density = fired / max(s.n_rows, 1)
    mean = float(s.act_sum[latent]) / max(fired, 1)
    nav = [
        html('<a href="../../index.html">{}</a> ›', title),
        html('<a href="../index.html">{}</a> ›', d.name),
        html("latent {}", latent),
    ]
    if latent > 0:
        nav.append(html('<a href="{0}.html">← {0}</a>', latent - 1))
    if latent + 1 < n_latents:
        nav.append(html('<a href="{0}.html">{0} →</a>', latent + 1))
    one_in = f" (1 in {round(1 / density):,} tokens)" if density > 0 else ""
    top = _examples(d, s.top_rows[latent], s.top_values[latent], s.top_windows[latent], max_act)
    body = html(
        '<nav>{nav}</nav><h1>{name} · latent {latent}</h1><p class="facts">density {density}{one_in}, fired on '
        "{fired:,} of {rows:,} tokens · max activation {max_act} · mean when firing {mean}</p>"
        '{explanation}<div class="panels">{panels}</div>{dynamics}<h2>Top activations</h2>{top}'
        "<h2>Examples across the activation distribution</h2>"
        "<p class=\"facts\">From a uniform random sample of this latent's firings, split into bands of equal mass.</p>"
        "{bands}",
        nav=join(nav, " "), name=d.name, latent=latent, density=percent(density), one_in=one_in, fired=fired,
        rows=s.n_rows, max_act=num(max_act), mean=num(mean), panels=join(_panels(d, latent, max_act)),
        dynamics=_dynamics(d, latent), explanation=explanation_section(d.explanations, latent),
        top=top or Html("<p>never fired on the sample</p>"), bands=join(_quantile_bands(d, latent, max_act)),
    )  # fmt: skip
    return _page(f"{d.name} · latent {latent}", body)


def _panels(d: SaeData, latent: int, max_act: float) -> list[Html]:
    """The histogram, the logit effects (with a model) and the nearest latents of ``latent``."""
    histogram = histogram_svg(d.stats.histogram[latent].tolist(), max_act)
    panels = [html("<div><h2>Activation histogram (non-zero)</h2>{}</div>", histogram)]
    if d.effects is not None:
        e = d.effects
        rows = (
            html(
                '<tr><td><span class="tok">{}</span></td><td class="n">{}</td>'
                '<td><span class="tok">{}</span></td><td class="n">{}</td></tr>',
                token_text(d.vocab.get(int(pi), "?")),
                num(float(pv)),
                token_text(d.vocab.get(int(si), "?")),
                num(float(sv)),
            )  # fmt: skip
            for pi, pv, si, sv in zip(e.promoted_ids[latent], e.promoted[latent], e.suppressed_ids[latent], e.suppressed[latent])
        )
        panels.append(
            html(
                "<div><h2>Logit effects</h2><table><thead><tr><th>promotes</th><th></th><th>suppresses</th><th></th>"
                "</tr></thead><tbody>{}</tbody></table></div>",
                join(rows),
            )
        )
    neighbours = (
        html('<tr><td><a href="{0}.html">latent {0}</a></td><td class="n">{1}</td></tr>', int(j), num(float(c)))
        for j, c in zip(d.neighbours.ids[latent], d.neighbours.cosine[latent])
    )
    panels.append(html("<div><h2>Nearest latents (decoder cosine)</h2><table><tbody>{}</tbody></table></div>", join(neighbours)))
    return panels


def _dynamics(d: SaeData, latent: int) -> Html:
    """The latent's drift and formation curves over the model's checkpoints, with its formation
    checkpoint and token purity; nothing when the browser was given no dynamics."""
    t = d.dynamics
    if t is None:
        return Html()
    labels = t.checkpoints
    formed = int(t.formation[latent])
    purity = float(t.token_purity[latent])
    formed_text = f"checkpoint {labels[formed]} ({formed + 1} of {len(labels)})" if formed >= 0 else "never"
    drift = line_chart_svg(
        [Line("cos to final", t.drift_to_final[:, latent].tolist(), "#1f6fb4")], labels, include=(0.0, 1.0),
        aria="decoder cosine to the final direction over checkpoints",
    )  # fmt: skip
    progress = line_chart_svg(
        [Line("cosine", t.progress_cosine[:, latent].tolist(), "#e8740c"),
         Line("weighted Jaccard", t.progress_wjaccard[:, latent].tolist(), "#2a9d4b")],
        labels, aria="progress measure over checkpoints", marker=formed if formed >= 0 else None,
        marker_title=f"formed at {labels[formed]}" if formed >= 0 else "",
    )  # fmt: skip
    dead = "" if bool(t.alive[latent]) else " Fired on fewer than two analysis tokens at the last checkpoint: not measured."
    return html(
        '<h2>Training dynamics</h2><p class="facts">Over {n} checkpoints of the model ({first} to {last}): '
        "formed at <b>{formed}</b> (where its progress first reached {fraction} of its final value) · "
        'token purity <b>{purity}</b> (share of its top tokens that are one token).{dead}</p><div class="panels">'
        "<div><h3>Drift: decoder cosine to its final direction</h3>{drift}</div>"
        "<div><h3>Formation: progress measure</h3>{progress}</div></div>"
        '<p class="facts">Measured by saekit track on the series of SAE {name} at {site}.</p>',
        n=len(labels), first=labels[0], last=labels[-1], formed=formed_text, fraction=percent(t.formed_fraction),
        purity=percent(purity) if math.isfinite(purity) else "–", dead=dead, drift=drift, progress=progress,
        name=t.name, site=t.site,
    )  # fmt: skip


def _quantile_bands(d: SaeData, latent: int, max_act: float) -> list[Html]:
    """One heading and its examples per quantile band in which ``latent`` has examples."""
    s = d.stats
    bands = []
    n_bands = s.quantile_rows.shape[1]
    for b in range(n_bands):
        rows, values = s.quantile_rows[latent, b], s.quantile_values[latent, b]
        if not bool((rows >= 0).any()):
            continue
        present = values[rows >= 0]
        bands.append(
            html(
                "<h3>quantile band {}–{}% (examples {} to {})</h3>{}",
                100 * b // n_bands,
                100 * (b + 1) // n_bands,
                num(float(present.min())),
                num(float(present.max())),
                _examples(d, rows, values, s.quantile_windows[latent, b], max_act),
            )  # fmt: skip
        )
    return bands


def _examples(d: SaeData, rows: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, max_act: float) -> Html:
    """One line per example: its activation, then its window of tokens shaded by the latent's activation."""
    before = d.window_before
    after = windows.shape[-1] - before - 1
    seqs, positions = window_positions(rows, d.layout, before, after)
    out = []
    for row, value, seq, pos, acts in zip(rows.tolist(), values.tolist(), seqs.tolist(), positions.tolist(), windows.tolist()):
        if row < 0:
            continue
        spans = []
        for w, (p, a) in enumerate(zip(pos, acts)):
            if p < 0:
                continue
            text = token_text(d.vocab.get(int(d.tokens[seq, p]), "?"))
            # Most tokens of a sparse latent are zero: they go out as bare text to keep pages small.
            if a > 0 and max_act > 0:
                alpha = round(255 * min(a / max_act, 1.0))
                cls = Html(' class="c"') if w == before else Html()
                spans.append(html('<span{} style="background:#e8740c{:02x}" title="{}">{}</span>', cls, alpha, num(a), text))
            elif w == before or p < d.layout.skip:
                spans.append(html('<span class="{}">{}</span>', "c" if w == before else "off", text))
            else:
                spans.append(text)
        out.append(html('<div class="ex"><span class="val">{}</span><span class="ctx">{}</span></div>', num(value), join(spans)))
    return join(out)


def _num_cell(value: float | int | None, shown: str | None = None) -> Html:
    """A right-aligned number, sorted by its value (missing: first in ascending order)."""
    v = "-Infinity" if value is None else repr(float(value))
    return html('<td class="n" data-v="{}">{}</td>', v, shown if shown is not None else num(value))


def _text_cell(value: str) -> Html:
    return html('<td data-v="{0}">{0}</td>', value)
