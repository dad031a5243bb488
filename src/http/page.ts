/**
 * The status page served at `GET /`: one self-contained HTML document (inline CSS and
 * script, no framework, no build step). It shows each queue's last green, its requests in
 * flight and a greenness timeline (inline SVG), and refreshes from `/queues` and
 * `/queues/:q/history` whenever `/events` (server-sent events) reports a change.
 *
 * Every piece of text from the API goes into the page through `textContent` or
 * `setAttribute`, never as markup, so URIs and names from repositories cannot inject any.
 * Elements carry stable `data-testid`s: `queue-<name>`, `last-green-<name>`,
 * `last-green-sha-<name>`, `timeline-<name>` (marks inside have `data-verdict`,
 * `data-request` and, for the last green, `data-last-green="true"`), `inflight-<name>`,
 * `counts-<name>`, `connection`.
 *
 * @module
 */

/** History entries drawn per timeline. */
export const TIMELINE_LENGTH = 60

const STYLE = `
:root { color-scheme: light dark; --bg: #f6f8fa; --card: #fff; --fg: #1f2328; --muted: #656d76; --line: #d0d7de;
  --green: #1a7f37; --red: #cf222e; --grey: #8c959f; --accent: #0969da; }
@media (prefers-color-scheme: dark) { :root { --bg: #0d1117; --card: #161b22; --fg: #e6edf3; --muted: #8d96a0; --line: #30363d;
  --green: #3fb950; --red: #f85149; --grey: #6e7681; --accent: #4493f8; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); }
header.top { display: flex; align-items: baseline; gap: 1rem; padding: 1rem 1.5rem; border-bottom: 1px solid var(--line); }
header.top h1 { font-size: 1.25rem; margin: 0; }
header.top .sub { color: var(--muted); }
#connection { margin-left: auto; font-size: 0.85rem; padding: 0.1rem 0.6rem; border-radius: 1rem; border: 1px solid var(--line); }
#connection[data-state="live"] { color: var(--green); border-color: var(--green); }
#connection[data-state="down"] { color: var(--red); border-color: var(--red); }
main { padding: 1rem 1.5rem; display: grid; gap: 1rem; }
section.queue { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.25rem; }
section.queue h2 { margin: 0; font-size: 1.1rem; display: inline; }
section.queue .ref { color: var(--muted); margin-left: 0.5rem; }
.row { margin-top: 0.6rem; display: flex; align-items: baseline; gap: 0.5rem; }
.label { color: var(--muted); flex: 0 0 6.5rem; }
.chart { flex: 1 1 auto; min-width: 0; }
.sha { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-weight: 600; }
.green { color: var(--green); }
.none { color: var(--muted); font-style: italic; }
.timeline { display: block; margin-top: 0.4rem; max-width: 100%; overflow: visible; }
.timeline .axis { stroke: var(--line); stroke-width: 2; }
.timeline .mark { stroke: var(--card); stroke-width: 1.5; }
.timeline .mark[data-verdict="green"] { fill: var(--green); }
.timeline .mark[data-verdict="red"] { fill: var(--red); }
.timeline .mark[data-verdict="indeterminate"] { fill: var(--grey); }
.timeline .ring { fill: none; stroke: var(--green); stroke-width: 2; }
.timeline text { fill: var(--muted); font-size: 10px; }
ul.inflight { margin: 0; padding: 0; list-style: none; }
ul.inflight li { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9rem; }
.state { color: var(--accent); }
.counts { color: var(--muted); font-size: 0.85rem; margin-top: 0.6rem; }
.error { color: var(--red); padding: 0 1.5rem; }
.legend { color: var(--muted); font-size: 0.8rem; display: block; }
.legend i { display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 50%; margin: 0 0.25rem 0 0.8rem; vertical-align: -1px; }
.legend i:first-child { margin-left: 0; }
.legend .dot-green { background: var(--green); }
.legend .dot-red { background: var(--red); }
.legend .dot-indeterminate { background: var(--grey); }
`

const SCRIPT = `
(function () {
  'use strict';
  var HISTORY = ${TIMELINE_LENGTH};
  var SVG = 'http://www.w3.org/2000/svg';
  var main = document.getElementById('queues');
  var conn = document.getElementById('connection');
  var errorBox = document.getElementById('error');
  var updated = document.getElementById('updated');
  var summaries = null;
  var histories = {};
  var dirty = {};
  var everything = true;
  var timer = null;
  var running = false;
  var again = false;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs) if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, attrs[key]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svgEl(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    for (var key in attrs) if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, String(attrs[key]));
    return node;
  }
  function shaOf(uri) {
    var hash = uri.lastIndexOf('#');
    var sha = hash >= 0 ? uri.slice(hash + 1) : (uri.indexOf('://') >= 0 ? uri.slice(uri.indexOf('://') + 3) : '');
    return /^[A-Za-z0-9._-]{1,64}$/.test(sha) ? sha : null;
  }
  function shortSha(uri) { var sha = shaOf(uri); return sha === null ? uri : sha.slice(0, 7); }
  function ago(at) {
    var s = Math.max(0, Math.round((Date.now() - at) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function getJson(path) {
    return fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' }).then(function (res) {
      return res.json().then(function (body) {
        if (!res.ok) throw new Error((body && body.error && body.error.message) || ('HTTP ' + res.status));
        return body;
      });
    });
  }

  function refresh() {
    timer = null;
    if (running) { again = true; return; }
    running = true;
    var all = everything;
    var names = Object.keys(dirty);
    everything = false;
    dirty = {};
    getJson('queues').then(function (queues) {
      summaries = queues;
      var todo = queues.filter(function (q) { return all || names.indexOf(q.name) >= 0 || !histories[q.name]; });
      return Promise.all(todo.map(function (q) {
        return getJson('queues/' + encodeURIComponent(q.name) + '/history?limit=' + HISTORY).then(function (page) {
          histories[q.name] = page.items;
        });
      }));
    }).then(function () {
      errorBox.textContent = '';
      updated.textContent = 'updated ' + new Date().toLocaleTimeString();
      render();
    }, function (error) {
      errorBox.textContent = 'Could not refresh: ' + error.message;
    }).then(function () {
      running = false;
      if (again) { again = false; schedule(null); }
    });
  }
  function schedule(queue) {
    if (typeof queue === 'string') dirty[queue] = true; else everything = true;
    if (timer === null) timer = setTimeout(refresh, 150);
  }

  function section(q) {
    var id = 'queue-' + q.name;
    var found = null;
    for (var i = 0; i < main.children.length; i++) if (main.children[i].getAttribute('data-testid') === id) found = main.children[i];
    if (found === null) {
      found = el('section', { 'class': 'queue', 'data-testid': id });
      main.appendChild(found);
    }
    return found;
  }

  function lastGreenRow(q) {
    var row = el('div', { 'class': 'row', 'data-testid': 'last-green-' + q.name });
    row.appendChild(el('span', { 'class': 'label' }, 'last green'));
    if (q.lastGreen === null) {
      row.appendChild(el('span', { 'class': 'none' }, 'none yet'));
      return row;
    }
    var sha = el('span', { 'class': 'sha green', 'data-testid': 'last-green-sha-' + q.name, title: q.lastGreen.uri }, shortSha(q.lastGreen.uri));
    row.appendChild(sha);
    row.appendChild(document.createTextNode(' \\u00b7 '));
    row.appendChild(el('span', { 'data-testid': 'last-green-request-' + q.name }, q.lastGreen.requestId));
    row.appendChild(document.createTextNode(' \\u00b7 '));
    row.appendChild(el('time', { datetime: new Date(q.lastGreen.at).toISOString(), title: new Date(q.lastGreen.at).toLocaleString() }, ago(q.lastGreen.at)));
    return row;
  }

  function timeline(q) {
    var items = (histories[q.name] || []).slice().reverse();
    var step = 22, pad = 12, height = 46, y = 18;
    var width = Math.max(320, pad * 2 + Math.max(1, items.length) * step);
    var chart = svgEl('svg', { 'class': 'timeline', 'data-testid': 'timeline-' + q.name, width: width, height: height,
      viewBox: '0 0 ' + width + ' ' + height, role: 'img' });
    chart.appendChild(svgEl('title', {})).textContent = 'Greenness of the last ' + items.length + ' recorded requests of ' + q.name + ', newest on the right';
    chart.appendChild(svgEl('line', { 'class': 'axis', x1: pad, x2: width - pad, y1: y, y2: y }));
    if (items.length === 0) {
      var empty = svgEl('text', { x: pad, y: 40 });
      empty.textContent = 'no verdicts yet';
      chart.appendChild(empty);
    }
    var lastGreenId = q.lastGreen === null ? null : q.lastGreen.requestId;
    items.forEach(function (r, i) {
      // Newest on the right edge, older ones leftwards.
      var x = width - pad - step / 2 - (items.length - 1 - i) * step;
      var verdict = r.verdict === 'green' || r.verdict === 'red' ? r.verdict : 'indeterminate';
      var isLast = r.id === lastGreenId;
      if (isLast) chart.appendChild(svgEl('circle', { 'class': 'ring', cx: x, cy: y, r: 10.5 }));
      var mark = svgEl('circle', { 'class': 'mark', cx: x, cy: y, r: isLast ? 7.5 : 6.5, 'data-verdict': verdict, 'data-request': r.id });
      if (isLast) mark.setAttribute('data-last-green', 'true');
      var tip = svgEl('title', {});
      tip.textContent = r.id + ' \\u00b7 ' + shortSha(r.uri) + ' \\u00b7 ' + verdict + (r.strategy ? ' (' + r.strategy + ')' : '') +
        (r.endedAt ? ' \\u00b7 ' + new Date(r.endedAt).toLocaleString() : '') + (r.reason ? ' \\u00b7 ' + r.reason : '');
      mark.appendChild(tip);
      chart.appendChild(mark);
      if (isLast) {
        var label = svgEl('text', { x: Math.min(x, width - 30), y: 42, 'text-anchor': 'middle' });
        label.textContent = 'last green';
        chart.appendChild(label);
      }
    });
    return chart;
  }

  function inflight(q) {
    var row = el('div', { 'class': 'row' });
    row.appendChild(el('span', { 'class': 'label' }, 'in flight'));
    var list = el('ul', { 'class': 'inflight', 'data-testid': 'inflight-' + q.name });
    if (q.inFlight.length === 0) list.appendChild(el('li', { 'class': 'none' }, 'none'));
    q.inFlight.forEach(function (r) {
      var item = el('li', { 'data-request': r.id });
      item.appendChild(el('span', {}, r.id + '  '));
      item.appendChild(el('span', { 'class': 'sha', title: r.uri }, shortSha(r.uri)));
      item.appendChild(document.createTextNode('  '));
      item.appendChild(el('span', { 'class': 'state' }, r.step || r.state));
      list.appendChild(item);
    });
    row.appendChild(list);
    return row;
  }

  function render() {
    if (summaries === null) return;
    var keep = {};
    summaries.forEach(function (q) {
      keep['queue-' + q.name] = true;
      var box = section(q);
      while (box.firstChild) box.removeChild(box.firstChild);
      var head = el('div', {});
      head.appendChild(el('h2', {}, q.name));
      head.appendChild(el('span', { 'class': 'ref' }, q.config.ref + (q.config.repo ? ' in ' + q.config.repo : '')));
      box.appendChild(head);
      box.appendChild(lastGreenRow(q));
      var chartRow = el('div', { 'class': 'row' });
      chartRow.appendChild(el('span', { 'class': 'label' }, 'timeline'));
      var chartBox = el('div', { 'class': 'chart' });
      var legend = el('span', { 'class': 'legend' });
      ['green', 'red', 'indeterminate'].forEach(function (verdict) {
        legend.appendChild(el('i', { 'class': 'dot-' + verdict }));
        legend.appendChild(document.createTextNode(verdict));
      });
      chartBox.appendChild(legend);
      chartBox.appendChild(timeline(q));
      chartRow.appendChild(chartBox);
      box.appendChild(chartRow);
      box.appendChild(inflight(q));
      var c = q.counts;
      box.appendChild(el('div', { 'class': 'counts', 'data-testid': 'counts-' + q.name },
        c.total + ' requests: ' + c.green + ' green, ' + c.red + ' red, ' + c.indeterminate + ' indeterminate, ' +
        c.superseded + ' superseded, ' + c.cancelled + ' cancelled, ' + c.inFlight + ' in flight'));
    });
    for (var i = main.children.length - 1; i >= 0; i--) {
      var child = main.children[i];
      if (!keep[child.getAttribute('data-testid')]) main.removeChild(child);
    }
    if (summaries.length === 0) main.appendChild(el('p', { 'class': 'none', 'data-testid': 'no-queues' }, 'No queues yet.'));
  }

  function connect() {
    if (typeof EventSource === 'undefined') { setInterval(function () { schedule(null); }, 5000); return; }
    var source = new EventSource('events');
    source.onopen = function () {
      conn.textContent = 'live';
      conn.setAttribute('data-state', 'live');
      schedule(null);
    };
    source.onerror = function () {
      conn.textContent = 'reconnecting\\u2026';
      conn.setAttribute('data-state', 'down');
    };
    source.onmessage = function (message) {
      var queue = null;
      try { var entry = JSON.parse(message.data); queue = entry && entry.payload && entry.payload.queue; } catch (e) { queue = null; }
      schedule(typeof queue === 'string' ? queue : null);
    };
    source.addEventListener('gap', function () { schedule(null); });
  }

  schedule(null);
  connect();
  setInterval(render, 30000);
})();
`

/** The status page, with `nonce` on its inline style and script (matching the response's CSP). */
export function statusPage(nonce: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stovepipe — last green</title>
<link rel="icon" href="data:,">
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
<header class="top">
<h1>Stovepipe</h1>
<span class="sub">which commit is the last known green</span>
<span class="sub" id="updated"></span>
<span id="connection" data-testid="connection" data-state="connecting">connecting…</span>
</header>
<p id="error" class="error" role="alert"></p>
<main id="queues" data-testid="queues" aria-live="polite"></main>
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>
`
}
