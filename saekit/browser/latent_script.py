"""The script of the one latent page (``<sae>/latent.html#<id>``): it reads the SAE's store as the server
and the static export both serve it (``page.json``, the record of the latent in ``latents.bin`` by one
HTTP range request, ``tokens.bin``, and any extra panel's file) and renders the latent.

Every value read from those files reaches the page as a text node (``textContent``, ``createTextNode``)
or as a number in an attribute set with ``setAttribute``; the script never parses markup, so nothing in
a store can add an element or run code. The page's CSP allows this script by its hash and fetches from
the page's own origin only.

Extra panels: ``page.json``'s ``extras`` lists per-latent files of fixed-size records beside the store,
each with a ``kind``; ``PANELS[kind](extra, record)`` returns the panel's element. ``dynamics``
(``saekit track``'s curves) is the one kind so far; a new kind is a writer in
:mod:`saekit.browser.page_data` and an entry of ``PANELS`` here.
"""

from __future__ import annotations

from saekit.browser.fmt import Html

LATENT_SCRIPT = Html("""(function () {
  'use strict';
  var root = document.getElementById('latent');
  if (!root) return;
  var SVG = 'http://www.w3.org/2000/svg', meta = null, tokens = null, whole = {};
  function node(doc, tag, attrs, kids) {
    var e = doc(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    (kids || []).forEach(function (c) { e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function el(tag, attrs, kids) { return node(function (t) { return document.createElement(t); }, tag, attrs, kids); }
  function svg(tag, attrs, kids) { return node(function (t) { return document.createElementNS(SVG, t); }, tag, attrs, kids); }
  function num(x) {
    if (x === 0) return '0';
    if (!isFinite(x)) return String(x);
    if (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }
  function count(n) { return n.toLocaleString('en-US'); }
  function percent(f) { return String(Number((100 * f).toPrecision(3))) + '%'; }
  function token(id) {
    var t = Object.prototype.hasOwnProperty.call(meta.vocab, id) ? meta.vocab[id] : '?';
    return t.replace(/\\n/g, '\\u21b5').replace(/\\t/g, '\\u21e5').replace(/\\r/g, '\\u240d');
  }
  function half(h) {
    var s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
    if (e === 0) return s * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * Math.pow(2, e - 15);
  }
  var READ = {
    f4: function (v, o) { return v.getFloat32(o, true); }, f2: function (v, o) { return half(v.getUint16(o, true)); },
    u4: function (v, o) { return v.getUint32(o, true); }, u2: function (v, o) { return v.getUint16(o, true); },
    u1: function (v, o) { return v.getUint8(o); }, i1: function (v, o) { return v.getInt8(o); }, i4: function (v, o) { return v.getInt32(o, true); }
  };
  function decode(buffer, fields) {
    var view = new DataView(buffer), out = {};
    fields.forEach(function (f) {
      var read = READ[f[1]], size = parseInt(f[1].slice(1), 10), values = [];
      for (var k = 0; k < f[3]; k++) values.push(read(view, f[2] + k * size));
      out[f[0]] = values;
    });
    return out;
  }
  function fetched(r, url) {
    if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
    return r;
  }
  function record(file, size, i) {
    if (whole[file]) return Promise.resolve(whole[file].slice(i * size, (i + 1) * size));
    var range = 'bytes=' + i * size + '-' + ((i + 1) * size - 1);
    return fetch(file, {headers: {Range: range}}).then(function (r) {
      return fetched(r, file).arrayBuffer().then(function (b) {
        if (r.status === 206) return b;
        whole[file] = b;  // a static server without ranges sent the whole file: keep it
        return b.slice(i * size, (i + 1) * size);
      });
    });
  }
  function examples(r, rows, values, windows) {
    var before = meta.window_before, W = meta.window, context = meta.layout[0], skip = meta.layout[1];
    var per = context - skip, out = [];
    rows.forEach(function (row, k) {
      if (row < 0) return;
      var seq = Math.floor(row / per), pos = row % per + skip, spans = [];
      for (var w = 0; w < W; w++) {
        var p = pos - before + w;
        if (p < 0 || p >= context) continue;
        var text = token(tokens[seq * context + p]), q = windows[k * W + w], a = q / 255 * r.max_act[0];
        if (q > 0) {
          var attrs = {style: 'background:#e8740c' + ('0' + q.toString(16)).slice(-2), title: num(a)};
          if (w === before) attrs['class'] = 'c';
          spans.push(el('span', attrs, [text]));
        } else if (w === before || p < skip) {
          spans.push(el('span', {'class': w === before ? 'c' : 'off'}, [text]));
        } else {
          spans.push(text);
        }
      }
      out.push(el('div', {'class': 'ex'}, [el('span', {'class': 'val'}, [num(values[k])]), el('span', {'class': 'ctx'}, spans)]));
    });
    return out;
  }
  function histogram(counts, high) {
    var w = 420, h = 130, left = 8, inner = w - 16, top = 6, ih = h - 28, peak = Math.max.apply(null, counts.concat([1]));
    var bar = inner / counts.length, kids = [svg('line', {x1: left, y1: top + ih, x2: w - left, y2: top + ih, stroke: '#555'})];
    counts.forEach(function (c, i) {
      var bh = ih * c / peak, lo = high * i / counts.length, hi = high * (i + 1) / counts.length;
      kids.push(svg('rect', {x: (left + i * bar).toFixed(1), y: (top + ih - bh).toFixed(1), width: Math.max(bar - 1, 0.5).toFixed(1),
        height: bh.toFixed(1), fill: '#e8740c'}, [svg('title', {}, [num(lo) + ' to ' + num(hi) + ': ' + count(c)])]));
    });
    kids.push(svg('text', {x: left, y: h - 6, 'font-size': 11}, ['0']));
    kids.push(svg('text', {x: w / 2, y: h - 6, 'font-size': 11, 'text-anchor': 'middle'}, ['activation']));
    kids.push(svg('text', {x: w - left, y: h - 6, 'font-size': 11, 'text-anchor': 'end'}, [num(high)]));
    kids.push(svg('text', {x: left + 2, y: top + 10, 'font-size': 10, fill: '#555'}, ['max bin ' + count(peak)]));
    return svg('svg', {width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, role: 'img', 'class': 'hist',
      'aria-label': 'histogram of non-zero activations'}, kids);
  }
  function chart(lines, labels, marker, markerTitle, include) {
    var w = 420, h = 150, left = 44, right = 10, top = 20, iw = w - left - right, ih = h - top - 22;
    var finite = [];
    lines.forEach(function (l) { l.values.forEach(function (v) { if (isFinite(v)) finite.push(v); }); });
    var lo = Math.min.apply(null, finite.concat(include)), hi = Math.max.apply(null, finite.concat(include));
    if (hi - lo <= 1e-9) hi = lo + 1;
    var step = iw / Math.max(labels.length - 1, 1);
    function x(i) { return (left + i * step).toFixed(1); }
    function y(v) { return (top + ih * (hi - v) / (hi - lo)).toFixed(1); }
    var kids = [svg('rect', {x: left, y: top, width: iw, height: ih, fill: 'none', stroke: '#ddd'})];
    if (marker >= 0) kids.push(svg('line', {x1: x(marker), y1: top, x2: x(marker), y2: top + ih, stroke: '#555',
      'stroke-dasharray': '4 2', 'class': 'marker'}, [svg('title', {}, [markerTitle])]));
    var legend = left;
    lines.forEach(function (l) {
      var run = [];
      function flush() {
        if (run.length > 1) kids.push(svg('polyline', {points: run.join(' '), fill: 'none', stroke: l.color, 'stroke-width': 1.5}));
        run = [];
      }
      l.values.forEach(function (v, i) {
        if (!isFinite(v)) return flush();
        run.push(x(i) + ',' + y(v));
        kids.push(svg('circle', {cx: x(i), cy: y(v), r: 2.5, fill: l.color}, [svg('title', {}, [labels[i] + ': ' + l.name + ' ' + num(v)])]));
      });
      flush();
      kids.push(svg('text', {x: legend, y: 12, 'font-size': 11, fill: l.color}, ['\\u2014 ' + l.name]));
      legend += 14 + 7 * l.name.length;
    });
    kids.push(svg('text', {x: left - 4, y: top + 8, 'font-size': 10, 'text-anchor': 'end'}, [num(hi)]));
    kids.push(svg('text', {x: left - 4, y: top + ih, 'font-size': 10, 'text-anchor': 'end'}, [num(lo)]));
    return svg('svg', {width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, role: 'img', 'class': 'curve'}, kids);
  }
  var FILES = 'abcdefgh', CHESS = '\u265a\u265b\u265c\u265d\u265e\u265f \u2659\u2658\u2657\u2656\u2655\u2654';
  function board(extra, squares, played, mark) {
    // Othello: row 1 on top, as its engine numbers squares; chess: rank 8 on top, white below.
    var cell = 26, edge = 14, size = edge + 8 * cell, chess = extra.game === 'chess', kids = [];
    for (var sq = 0; sq < 64; sq++) {
      var file = sq % 8, rank = Math.floor(sq / 8), x = edge + file * cell, y = (chess ? 7 - rank : rank) * cell;
      var fill = chess ? ((file + rank) % 2 ? '#f0d9b5' : '#b58863') : '#2e8b57', v = squares[sq];
      if (sq === played) fill = chess ? '#f6f669' : '#8fd18f';
      var name = FILES[file] + (rank + 1), attrs = {x: x, y: y, width: cell, height: cell, fill: fill, stroke: chess ? 'none' : '#1d5e3a'};
      if (sq === played) attrs['class'] = 'played';
      kids.push(svg('rect', attrs, [svg('title', {}, [name + (sq === played ? ': just played' : '')])]));
      if (!chess && v) kids.push(svg('circle', {cx: x + cell / 2, cy: y + cell / 2, r: cell * 0.4, fill: v === 1 ? '#111' : '#fafafa', stroke: '#111'}));
      if (chess && CHESS.charAt(v) !== ' ') kids.push(svg('text', {x: x + cell / 2, y: y + cell * 0.78, 'font-size': cell * 0.8,
        'text-anchor': 'middle'}, [CHESS.charAt(v)]));
      if (sq === mark) kids.push(svg('rect', {x: x + 1.5, y: y + 1.5, width: cell - 3, height: cell - 3, fill: 'none', stroke: '#d7191c',
        'stroke-width': 3, 'class': 'mark'}));
    }
    for (var k = 0; k < 8; k++) {
      kids.push(svg('text', {x: edge + k * cell + cell / 2, y: 8 * cell + 11, 'font-size': 10, 'text-anchor': 'middle'}, [FILES[k]]));
      kids.push(svg('text', {x: 2, y: (chess ? 7 - k : k) * cell + cell / 2 + 4, 'font-size': 10}, [String(k + 1)]));
    }
    return svg('svg', {width: size, height: size, viewBox: '0 0 ' + size + ' ' + size, role: 'img', 'class': 'board'}, kids);
  }
  var PANELS = {
    board: function (extra, d) {
      var best = d.best[0], name = best >= 0 ? extra.properties[best] : null, mark = best >= 0 ? extra.marks[best] : -1;
      var per = meta.layout[0], boards = [];
      d.rows.forEach(function (row, k) {
        if (row < 0) return;
        var game = Math.floor(row / per), ply = row % per, first = d.first_to_move[k];
        var mover = extra.game === 'chess' ? (first ? 'white' : 'black') : (first ? 'black' : 'white');
        var caption = 'game ' + game + ', ' + (extra.game === 'chess' ? 'character ' : 'move ') + (ply + 1) + ' (' +
          token(tokens[row]).trim() + ') \u00b7 ' + mover + ' to move';
        boards.push(el('figure', {'class': 'board'}, [board(extra, d.squares.slice(k * 64, (k + 1) * 64), d.played[k], mark),
          el('figcaption', {}, [caption])]));
      });
      var facts = name === null ? ['Never on at the browser\u2019s positions: no best property.'] : ['Best property: ', el('b', {}, [name]),
        ', F1 ' + num(d.f1[0]) + (d.threshold[0] > 0 ? ' (on above ' + percent(d.threshold[0]) + ' of its largest activation)' : ' (on wherever it fires)') +
        (mark >= 0 ? '; its square is outlined in red.' : '; a property of no square.')];
      return el('div', {}, [el('h2', {}, ['Boards at the top positions']), el('p', {'class': 'facts'}, facts),
        el('p', {'class': 'facts'}, ['Each board is the position the model had read up to the token; the square just played is lit.']),
        el('div', {'class': 'boards'}, boards.length ? boards : [el('p', {}, ['never fired on the sample'])])]);
    },
    dynamics: function (extra, d) {
      var labels = extra.labels, formed = d.formation[0], purity = d.token_purity[0];
      var formedText = formed >= 0 ? 'checkpoint ' + labels[formed] + ' (' + (formed + 1) + ' of ' + labels.length + ')' : 'never';
      var drift = chart([{name: 'cos to final', values: d.drift_to_final, color: '#1f6fb4'}], labels, -1, '', [0, 1]);
      var progress = chart([{name: 'cosine', values: d.progress_cosine, color: '#e8740c'},
        {name: 'weighted Jaccard', values: d.progress_wjaccard, color: '#2a9d4b'}], labels, formed,
        formed >= 0 ? 'formed at ' + labels[formed] : '', [0, 0]);
      var dead = d.alive[0] ? '' : ' Fired on fewer than two analysis tokens at the last checkpoint: not measured.';
      return el('div', {}, [el('h2', {}, ['Training dynamics']), el('p', {'class': 'facts'}, [
        'Over ' + labels.length + ' checkpoints of the model (' + labels[0] + ' to ' + labels[labels.length - 1] + '): formed at ',
        el('b', {}, [formedText]), ' (where its progress first reached ' + percent(extra.formed_fraction) + ' of its final value) \\u00b7 token purity ',
        el('b', {}, [isFinite(purity) ? percent(purity) : '\\u2013']), ' (share of its top tokens that are one token).' + dead]),
        el('div', {'class': 'panels'}, [el('div', {}, [el('h3', {}, ['Drift: decoder cosine to its final direction']), drift]),
          el('div', {}, [el('h3', {}, ['Formation: progress measure']), progress])]),
        el('p', {'class': 'facts'}, ['Measured by saekit track on the series of SAE ' + extra.name + ' at ' + extra.site + '.'])]);
    }
  };
  function effects(r) {
    var rows = r.promoted_ids.map(function (id, k) {
      return el('tr', {}, [el('td', {}, [el('span', {'class': 'tok'}, [token(id)])]), el('td', {'class': 'n'}, [num(r.promoted[k])]),
        el('td', {}, [el('span', {'class': 'tok'}, [token(r.suppressed_ids[k])])]), el('td', {'class': 'n'}, [num(r.suppressed[k])])]);
    });
    var head = el('tr', {}, [el('th', {}, ['promotes']), el('th'), el('th', {}, ['suppresses']), el('th')]);
    return el('div', {}, [el('h2', {}, ['Logit effects']), el('table', {}, [el('thead', {}, [head]), el('tbody', {}, rows)])]);
  }
  function neighbours(r) {
    var rows = r.neighbour_ids.map(function (j, k) {
      return el('tr', {}, [el('td', {}, [el('a', {href: '#' + j}, ['latent ' + j])]), el('td', {'class': 'n'}, [num(r.neighbour_cosine[k])])]);
    });
    return el('div', {}, [el('h2', {}, ['Nearest latents (decoder cosine)']), el('table', {}, [el('tbody', {}, rows)])]);
  }
  function explanation(i) {
    var e = meta.explanations;
    if (!e) return [];
    var found = e.latents[String(i)];
    if (!found) return [el('h2', {}, ['Explanation']), el('p', {'class': 'facts'}, ['none: ' + (e.failed[String(i)] || 'not interpreted') + ' (' + e.source + ')'])];
    return [el('h2', {}, ['Explanation']), el('p', {}, [el('b', {}, [found.explanation])]),
      el('p', {'class': 'facts'}, ['detection: ' + found.detection + ' \\u00b7 fuzzing: ' + found.fuzzing + ' \\u00b7 ' + e.source])];
  }
  function bands(r) {
    var out = [], nb = meta.dims.bands, pb = meta.dims.per_band, W = meta.window;
    for (var b = 0; b < nb; b++) {
      var rows = r.quantile_rows.slice(b * pb, (b + 1) * pb), values = r.quantile_values.slice(b * pb, (b + 1) * pb);
      values = values.map(function (q) { return q / 65535 * r.max_act[0]; });
      var present = values.filter(function (v, k) { return rows[k] >= 0; });
      if (!present.length) continue;
      out.push(el('h3', {}, ['quantile band ' + Math.floor(100 * b / nb) + '\\u2013' + Math.floor(100 * (b + 1) / nb) + '% (examples ' +
        num(Math.min.apply(null, present)) + ' to ' + num(Math.max.apply(null, present)) + ')']));
      out = out.concat(examples(r, rows, values, r.quantile_windows.slice(b * pb * W, (b + 1) * pb * W)));
    }
    return out;
  }
  function render(i, r, extras) {
    var max = r.max_act[0], fired = r.fire_count[0], density = fired / Math.max(meta.n_rows, 1), mean = r.act_sum[0] / Math.max(fired, 1);
    var nav = [el('a', {href: '../index.html'}, [meta.title]), ' \\u203a ', el('a', {href: 'index.html'}, [meta.name]), ' \\u203a latent ' + i + ' '];
    if (i > 0) nav.push(el('a', {href: '#' + (i - 1)}, ['\\u2190 ' + (i - 1)]), ' ');
    if (i + 1 < meta.d_sae) nav.push(el('a', {href: '#' + (i + 1)}, [(i + 1) + ' \\u2192']));
    var panels = [el('div', {}, [el('h2', {}, ['Activation histogram (non-zero)']), histogram(r.histogram, max)])];
    if (meta.dims.logit_k > 0) panels.push(effects(r));
    panels.push(neighbours(r));
    var top = examples(r, r.top_rows, r.top_values.map(function (q) { return q / 65535 * max; }), r.top_windows);
    var kids = [el('nav', {}, nav), el('h1', {}, [meta.name + ' \\u00b7 latent ' + i]), el('p', {'class': 'facts'}, ['density ' +
      percent(density) + (density > 0 ? ' (1 in ' + count(Math.round(1 / density)) + ' tokens)' : '') + ', fired on ' + count(fired) +
      ' of ' + count(meta.n_rows) + ' tokens \\u00b7 max activation ' + num(max) + ' \\u00b7 mean when firing ' + num(mean)])];
    kids = kids.concat(explanation(i), [el('div', {'class': 'panels'}, panels)]);
    extras.forEach(function (x) { kids.push(PANELS[x.extra.kind](x.extra, x.record)); });
    kids.push(el('h2', {}, ['Top activations']));
    kids = kids.concat(top.length ? top : [el('p', {}, ['never fired on the sample'])]);
    kids.push(el('h2', {}, ['Examples across the activation distribution']),
      el('p', {'class': 'facts'}, ["From a uniform random sample of this latent's firings, split into bands of equal mass."]));
    kids = kids.concat(bands(r));
    root.textContent = '';
    kids.forEach(function (k) { root.appendChild(k); });
    document.title = meta.name + ' \\u00b7 latent ' + i;
    root.setAttribute('data-latent', String(i));
  }
  function fail(message) {
    root.textContent = '';
    root.appendChild(el('p', {'class': 'error'}, [message]));
    root.setAttribute('data-latent', 'error');
  }
  function show() {
    var text = location.hash.slice(1) || '0';
    if (!/^(0|[1-9][0-9]{0,9})$/.test(text) || parseInt(text, 10) >= meta.d_sae) return fail('no latent ' + text + ' in this SAE (0 to ' + (meta.d_sae - 1) + ')');
    var i = parseInt(text, 10);
    var wanted = [record('latents.bin', meta.record_size, i)].concat(meta.extras.map(function (x) { return record(x.file, x.record_size, i); }));
    Promise.all(wanted).then(function (parts) {
      var extras = meta.extras.map(function (x, k) { return {extra: x, record: decode(parts[k + 1], x.fields)}; });
      render(i, decode(parts[0], meta.fields), extras);
      window.scrollTo(0, 0);
    }).catch(function (e) { fail(String(e)); });
  }
  Promise.all([fetch('page.json').then(function (r) { return fetched(r, 'page.json').json(); }),
    fetch('tokens.bin').then(function (r) { return fetched(r, 'tokens.bin').arrayBuffer(); })]).then(function (got) {
    meta = got[0];
    tokens = new Uint32Array(got[1]);
    window.addEventListener('hashchange', show);
    show();
  }).catch(function (e) { fail(String(e)); });
})();""")
"""The latent page's script (see the module docstring)."""
