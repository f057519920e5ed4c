'use strict';
// Polls status/history and renders it. Every value from the server goes
// through textContent or an attribute of our choosing: never HTML.
(function () {
  const $ = (id) => document.getElementById(id);
  const pad = (n) => String(n).padStart(2, '0');
  const clock = (t) => { const d = new Date(t); return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); };
  const dur = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor(s % 3600 / 60) + 'm';
  };
  const bytes = (n) => {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
  };
  const num = (n) => (n >= 100 || Number.isInteger(n) ? Math.round(n) : n.toFixed(1)).toString();
  const ms = (n) => (n == null ? '–' : n < 10 ? n.toFixed(1) + ' ms' : Math.round(n) + ' ms');
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text != null) e.textContent = text; if (cls) e.className = cls; return e; };
  const rows = (tbody, list) => {
    tbody.replaceChildren(...list.map(([cells, cls]) => { const tr = el('tr', null, cls); cells.forEach((c) => tr.appendChild(el('td', c))); return tr; }));
  };
  const SVG = 'http://www.w3.org/2000/svg';

  // chart draws one series, 0 at the bottom, the window's maximum at the
  // top; null values (no transaction applied that second) are skipped, and
  // seconds when walbust was not ready are shaded.
  function chart(svg, samples, key, span) {
    const end = samples.length ? samples[samples.length - 1].t : 0;
    const x = (t) => 600 - (end - t) / span * 600;
    let top = 0;
    samples.forEach((s) => { if (s[key] != null) top = Math.max(top, s[key]); });
    const scale = top > 0 ? top : 1;
    const parts = [];
    let pts = [];
    samples.forEach((s) => {
      if (!s.ready) {
        const r = document.createElementNS(SVG, 'rect');
        r.setAttribute('x', x(s.t) - 600 / (span / 1000)); r.setAttribute('y', 0);
        r.setAttribute('width', 600 / (span / 1000)); r.setAttribute('height', 100);
        parts.push(r);
      }
      if (s[key] == null) return; // nothing measured: the line joins the neighbours
      pts.push(x(s.t).toFixed(1) + ',' + (98 - s[key] / scale * 96).toFixed(1));
    });
    if (pts.length) parts.push(pts);
    svg.replaceChildren(...parts.map((p) => {
      if (!Array.isArray(p)) return p;
      if (p.length === 1) p.push((parseFloat(p[0]) + 2) + ',' + p[0].split(',')[1]);
      const l = document.createElementNS(SVG, 'polyline');
      l.setAttribute('points', p.join(' '));
      return l;
    }));
    return top;
  }

  function render(h) {
    const st = h.status;
    const banner = $('banner');
    banner.dataset.state = h.state;
    $('state').textContent = h.state;
    let since = null;
    if (h.state === 'stalled') {
      since = h.causes.length && h.causes[0].since; // oldest first
    } else {
      const back = h.events.find((e) => e.kind !== 'batch');
      if (back && back.kind !== 'stalled') since = back.time;
    }
    $('since').textContent = since ? 'since ' + clock(since) + ' (' + dur(Date.now() - new Date(since)) + ')' : '';
    $('causes').replaceChildren(...h.causes.map((c) => el('li', c.cause + ': ' + c.error)));

    const samples = h.samples;
    const last = samples.length ? samples[samples.length - 1] : null;
    let lastLag = null;
    for (let i = samples.length - 1; i >= 0 && lastLag == null; i--) lastLag = samples[i].lag_ms;
    $('lag-bytes').textContent = bytes(st.lag_bytes);
    $('lag-ms').textContent = ms(lastLag);
    $('tx-rate').textContent = num(h.transactions_per_sec);
    $('keys-rate').textContent = num(h.keys_per_sec);
    $('transactions').textContent = String(st.transactions);

    const span = h.capacity * h.interval_ms;
    $('max-bytes').textContent = '(max ' + bytes(chart($('chart-bytes'), samples, 'lag_bytes', span)) + ')';
    $('max-ms').textContent = '(max ' + ms(chart($('chart-ms'), samples, 'lag_ms', span)) + ')';
    $('window').textContent = 'last ' + dur(span) + ', one point a second; shaded: not streaming; rates over the last ' +
      h.rate_window_seconds + ' s' + (last ? '' : ' (no sample yet)');

    rows($('tables').tBodies[0], h.tables.map((t) => [[t.table, num(t.changes_per_sec), String(t.changes_total)]]));
    rows($('actions').tBodies[0], h.invalidations.map((a) => [[a.action, a.kind, num(a.per_sec), String(a.total)]]));
    rows($('positions').tBodies[0], [
      ['slot', st.slot], ['checkpoint', st.checkpoint_lsn], ['confirmed to Postgres', st.confirmed_lsn],
      ['server WAL end', st.server_wal_end], ['last commit applied', st.last_commit_time ? new Date(st.last_commit_time).toISOString() : '–'],
      ['Redis', st.redis_up ? 'up' : 'down' + (st.redis_error ? ': ' + st.redis_error : '')], ['version', st.version],
    ].map((r) => [r]));
    rows($('events').tBodies[0], h.events.map((e) => {
      if (e.kind === 'batch') {
        return [[clock(e.time), e.batches > 1 ? e.batches + ' batches' : 'batch',
          (e.transactions || 0) + ' tx, ' + (e.keys || 0) + ' keys, to ' + e.end_lsn + ', ' + ms(e.lag_ms)], 'batch'];
      }
      return [[clock(e.time), e.kind + ' (' + e.cause + ')', e.detail || ''], e.kind];
    }));
  }

  let polls = 0;
  function poll() {
    fetch('status/history', { cache: 'no-store', signal: AbortSignal.timeout(5000) })
      .then((r) => { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then((h) => {
        render(h);
        polls++;
        const f = $('updated');
        f.dataset.polls = String(polls);
        f.textContent = 'updated ' + clock(Date.now()) + ' (poll ' + polls + ')';
      })
      .catch((err) => {
        $('banner').dataset.state = 'unreachable';
        $('state').textContent = 'unreachable';
        $('since').textContent = 'walbust does not answer: ' + err.message;
        $('causes').replaceChildren();
      })
      .finally(() => setTimeout(poll, 1000));
  }
  poll();
})();
