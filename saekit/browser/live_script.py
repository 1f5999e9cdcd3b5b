"""The script of the local server's ``live.html``: it posts the typed text to ``api/live`` and shows
each token shaded by its largest latent activation, with its firing latents (links to their pages) on
click. Every value of the answer reaches the page as a text node or a number in an attribute; the
script parses no markup."""

from __future__ import annotations

from saekit.browser.fmt import Html

LIVE_SCRIPT = Html("""(function () {
  'use strict';
  var form = document.getElementById('live');
  if (!form) return;
  var out = document.getElementById('tokens'), detail = document.getElementById('detail'), state = document.getElementById('state');
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    (kids || []).forEach(function (c) { e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function num(x) { return x === 0 ? '0' : String(Number(x.toPrecision(4))); }
  function shown(t) { return t.replace(/\\n/g, '\\u21b5').replace(/\\t/g, '\\u21e5').replace(/\\r/g, '\\u240d'); }
  function pick(sae, tok, span) {
    Array.prototype.forEach.call(out.children, function (s) { s.classList.remove('c'); });
    span.classList.add('c');
    detail.textContent = '';
    detail.appendChild(el('h2', {}, ['"' + shown(tok.text) + '"']));
    if (!tok.latents.length) detail.appendChild(el('p', {'class': 'facts'}, ['no latent fires on this token']));
    var rows = tok.latents.map(function (l) {
      return el('tr', {}, [el('td', {}, [el('a', {href: encodeURIComponent(sae) + '/latent.html#' + l[0]}, ['latent ' + l[0]])]),
        el('td', {'class': 'n'}, [num(l[1])])]);
    });
    detail.appendChild(el('table', {}, [el('tbody', {}, rows)]));
  }
  function show(answer) {
    out.textContent = '';
    detail.textContent = '';
    var peak = 0;
    answer.tokens.forEach(function (t) { if (t.latents.length) peak = Math.max(peak, t.latents[0][1]); });
    answer.tokens.forEach(function (t) {
      var top = t.latents.length ? t.latents[0][1] : 0, alpha = peak > 0 ? Math.round(255 * top / peak) : 0;
      var span = el('span', {'class': 'tok', style: 'background:#e8740c' + ('0' + alpha.toString(16)).slice(-2),
        title: t.latents.length ? 'latent ' + t.latents[0][0] + ': ' + num(top) : 'no latent fires'}, [shown(t.text)]);
      span.addEventListener('click', function () { pick(answer.sae, t, span); });
      out.appendChild(span);
    });
    state.textContent = answer.tokens.length + ' tokens' + (answer.truncated ? ' (the text was cut there)' : '') + '; click a token';
  }
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    state.textContent = 'running\\u2026';
    var body = JSON.stringify({sae: document.getElementById('sae').value, text: document.getElementById('text').value});
    fetch('api/live', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: body}).then(function (r) {
      return r.json().then(function (answer) {
        if (!r.ok) throw new Error(answer.error || ('HTTP ' + r.status));
        show(answer);
      });
    }).catch(function (e) { state.textContent = String(e.message || e); });
  });
})();""")
"""The live page's script (see the module docstring)."""
