"""The HTML pages, as pure functions of the browser data. Every string from the corpus, the tokenizer
or a file is escaped; the one script is a constant allowed by its hash in the page's CSP, so even a
string that escaped escaping could not run.

URL layout (the same for the server and the static export, so every link is relative):

    index.html                      suite overview
    <sae>/index.html                sortable, searchable latent list
    <sae>/latent/<id>.html          one latent
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter

import torch

from saekit.browser.fmt import esc, num, percent, token_text, url_part
from saekit.browser.stats import window_positions
from saekit.browser.store import SaeData
from saekit.browser.svg import histogram_svg

SCRIPT = """(function () {
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
})();"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
"""Content-Security-Policy of every page: nothing loads from anywhere, only our own script runs."""

_STYLE = """
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
"""


def _page(title: str, body: str, *, script: bool = False) -> str:
    js = f"<script>{SCRIPT}</script>" if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>{body}{js}</body></html>"
    )


# ---------------------------------------------------------------------------------------------
# Overview


def overview_page(title: str, saes: dict[str, SaeData]) -> str:
    metric_keys = sorted({k for d in saes.values() for k in d.info.get("metrics", {})})
    head = "".join(
        f'<th data-type="{t}">{esc(h)}</th>'
        for h, t in [("SAE", "text"), ("architecture", "text"), ("site", "text"), ("latents", "num"),
                     ("hyper-parameters", "text"), ("L0 (sample)", "num"), ("never fired (sample)", "num")]
        + [(k, "num") for k in metric_keys]
    )  # fmt: skip
    rows = []
    for name, d in saes.items():
        info, sample = d.info, d.info["sample"]
        hparams = ", ".join(f"{k}={v}" for k, v in info.get("hparams", {}).items())
        metrics = info.get("metrics", {})
        cells = [
            f'<td data-v="{esc(name)}"><a href="{url_part(name)}/index.html">{esc(name)}</a></td>',
            _text_cell(info["architecture"]),
            _text_cell(info["site"]),
            _num_cell(info["d_sae"]),
            _text_cell(hparams),
            _num_cell(sample["l0"]),
            _num_cell(sample["dead_fraction"], percent(sample["dead_fraction"])),
        ] + [_num_cell(metrics.get(k)) for k in metric_keys]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    by_site: dict[str, list[str]] = {}
    for name, d in saes.items():
        by_site.setdefault(str(d.info["site"]), []).append(name)
    sites = "".join(
        f"<li>{esc(site)}: " + ", ".join(f'<a href="{url_part(n)}/index.html">{esc(n)}</a>' for n in names) + "</li>"
        for site, names in by_site.items()
    )
    first = next(iter(saes.values()), None)
    sample = ""
    if first is not None:
        s = first.info["sample"]
        sample = (
            f'<p class="facts">Sample: {s["tokens"]:,} tokens of <b>{esc(s["corpus"])}</b> ({esc(s["split"])} split), '
            f"{s['contexts']:,} contexts of {s['context_size']} tokens, the first {s['skip_positions']} positions of each "
            f"left out; model {esc(first.info.get('model', '?'))}.</p>"
        )
    body = (
        f"<h1>{esc(title)}</h1>{sample}<h2>Sites</h2><ul>{sites}</ul><h2>SAEs</h2>"
        f'<table id="latents"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        '<p class="facts">Click a column to sort. "train" metrics come from each SAE\'s provenance.json, "eval" '
        'metrics from a results.json beside the suite; "sample" numbers from the tokens above.</p>'
        '<p hidden><input id="q"><span id="count"></span></p>'
    )
    return _page(title, body, script=True)


# ---------------------------------------------------------------------------------------------
# Latent list


def _center_tokens(d: SaeData) -> torch.Tensor:
    """[L, top_n] token id at each top example (-1 where empty)."""
    rows = d.stats.top_rows
    per = d.layout.per_context
    flat = (rows.clamp(min=0) // per) * d.layout.context + rows.clamp(min=0) % per + d.layout.skip
    return torch.where(rows >= 0, d.tokens.flatten()[flat], -1)


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
        tops = " ".join(f'<span class="tok">{token_text(d.vocab.get(t, "?"))}</span>×{n}' for t, n in common)
        cells = [
            f'<td class="n" data-v="{i}"><a href="latent/{i}.html">{i}</a></td>',
            _num_cell(density[i], percent(density[i])),
            _num_cell(max_act[i]),
            _num_cell(mean_act[i]),
            f'<td data-v="{esc(" ".join(d.vocab.get(t, "?") for t, _ in common))}">{tops}</td>',
        ]
        if promoted is not None:
            words = [d.vocab.get(t, "?") for t in promoted[i]]
            cells.append(
                f'<td data-v="{esc(" ".join(words))}">'
                + " ".join(f'<span class="tok">{token_text(w)}</span>' for w in words)
                + "</td>"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    heads = [("latent", "num"), ("density", "num"), ("max act", "num"), ("mean act (firing)", "num"), ("top tokens", "text")]
    if promoted is not None:
        heads.append(("promotes", "text"))
    head = "".join(f'<th data-type="{t}">{esc(h)}</th>' for h, t in heads)
    info = d.info
    body = (
        f'<nav><a href="../index.html">{esc(title)}</a> › {esc(d.name)}</nav>'
        f"<h1>{esc(d.name)}</h1>"
        f'<p class="facts">{esc(info["architecture"])} SAE at {esc(info["site"])}, {info["d_sae"]:,} latents; '
        f"L0 {num(info['sample']['l0'])} and {percent(info['sample']['dead_fraction'])} never fired on "
        f"{info['sample']['tokens']:,} sample tokens.</p>"
        '<p><input id="q" type="search" placeholder="search tokens or latent ids" autofocus> <span id="count"></span></p>'
        f'<table id="latents"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
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
    nav = [f'<a href="../../index.html">{esc(title)}</a> ›', f'<a href="../index.html">{esc(d.name)}</a> ›', f"latent {latent}"]
    if latent > 0:
        nav.append(f'<a href="{latent - 1}.html">← {latent - 1}</a>')
    if latent + 1 < n_latents:
        nav.append(f'<a href="{latent + 1}.html">{latent + 1} →</a>')
    one_in = f" (1 in {round(1 / density):,} tokens)" if density > 0 else ""
    facts = (
        f"density {percent(density)}{one_in}, fired on {fired:,} of {s.n_rows:,} tokens · "
        f"max activation {num(max_act)} · mean when firing {num(mean)}"
    )
    panels = _panels(d, latent, max_act)
    top = _examples(d, s.top_rows[latent], s.top_values[latent], s.top_windows[latent], max_act)
    bands = _quantile_bands(d, latent, max_act)
    body = (
        f'<nav>{" ".join(nav)}</nav><h1>{esc(d.name)} · latent {latent}</h1><p class="facts">{facts}</p>'
        f'<div class="panels">{"".join(panels)}</div>'
        f"<h2>Top activations</h2>{top or '<p>never fired on the sample</p>'}"
        "<h2>Examples across the activation distribution</h2>"
        '<p class="facts">From a uniform random sample of this latent\'s firings, split into bands of equal mass.</p>'
        + "".join(bands)
    )
    return _page(f"{d.name} · latent {latent}", body)


def _panels(d: SaeData, latent: int, max_act: float) -> list[str]:
    """The histogram, the logit effects (with a model) and the nearest latents of ``latent``."""
    panels = [f"<div><h2>Activation histogram (non-zero)</h2>{histogram_svg(d.stats.histogram[latent].tolist(), max_act)}</div>"]
    if d.effects is not None:
        panels.append(
            "<div><h2>Logit effects</h2><table><thead><tr><th>promotes</th><th></th><th>suppresses</th><th></th></tr></thead><tbody>"
            + "".join(
                f'<tr><td><span class="tok">{token_text(d.vocab.get(int(pi), "?"))}</span></td><td class="n">{num(float(pv))}</td>'
                f'<td><span class="tok">{token_text(d.vocab.get(int(si), "?"))}</span></td><td class="n">{num(float(sv))}</td></tr>'
                for pi, pv, si, sv in zip(
                    d.effects.promoted_ids[latent],
                    d.effects.promoted[latent],
                    d.effects.suppressed_ids[latent],
                    d.effects.suppressed[latent],
                )  # fmt: skip
            )
            + "</tbody></table></div>"
        )
    panels.append(
        "<div><h2>Nearest latents (decoder cosine)</h2><table><tbody>"
        + "".join(
            f'<tr><td><a href="{int(j)}.html">latent {int(j)}</a></td><td class="n">{num(float(c))}</td></tr>'
            for j, c in zip(d.neighbours.ids[latent], d.neighbours.cosine[latent])
        )
        + "</tbody></table></div>"
    )
    return panels


def _quantile_bands(d: SaeData, latent: int, max_act: float) -> list[str]:
    """One heading and its examples per quantile band in which ``latent`` has examples."""
    s = d.stats
    bands = []
    n_bands = s.quantile_rows.shape[1]
    for b in range(n_bands):
        rows, values = s.quantile_rows[latent, b], s.quantile_values[latent, b]
        if not bool((rows >= 0).any()):
            continue
        lo, hi = 100 * b // n_bands, 100 * (b + 1) // n_bands
        present = values[rows >= 0]
        bands.append(
            f"<h3>quantile band {lo}–{hi}% (examples {num(float(present.min()))} to {num(float(present.max()))})</h3>"
            + _examples(d, rows, values, s.quantile_windows[latent, b], max_act)
        )
    return bands


def _examples(d: SaeData, rows: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, max_act: float) -> str:
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
                cls = ' class="c"' if w == before else ""
                spans.append(f'<span{cls} style="background:#e8740c{alpha:02x}" title="{num(a)}">{text}</span>')
            elif w == before or p < d.layout.skip:
                spans.append(f'<span class="{"c" if w == before else "off"}">{text}</span>')
            else:
                spans.append(text)
        out.append(f'<div class="ex"><span class="val">{num(value)}</span><span class="ctx">{"".join(spans)}</span></div>')
    return "".join(out)


def _num_cell(value: float | int | None, shown: str | None = None) -> str:
    v = "-Infinity" if value is None else repr(float(value))
    return f'<td class="n" data-v="{esc(v)}">{esc(shown if shown is not None else num(value))}</td>'


def _text_cell(value: object) -> str:
    return f'<td data-v="{esc(value)}">{esc(value)}</td>'
