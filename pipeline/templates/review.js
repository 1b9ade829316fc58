// The review page: pick, reject, rate, compare, filter; every change saved at once.
// Text from the plan (prompts, paths) is only ever set with textContent or attributes,
// never parsed as HTML.
(() => {
  'use strict';

  const token = new URLSearchParams(location.search).get('token') || '';
  const withToken = (url) => url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
  const encodePath = (path) => path.split('/').map(encodeURIComponent).join('/');
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'title' || k === 'type') node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  };

  const cells = $$('figure.cell');
  const byPath = new Map(cells.map((c) => [c.dataset.cell, c]));
  // path -> {status, rating, stale}: what this page believes the file holds (or will)
  const state = new Map();
  for (const c of cells) {
    const mark = c.dataset.mark || '';
    state.set(c.dataset.cell, {
      status: mark === 'pick' || mark === 'reject' ? mark : null,
      rating: c.dataset.rating ? Number(c.dataset.rating) : null,
      stale: mark === 'stale',
    });
  }
  const items = new Map(); // path -> the /api/items entry (prompt, seed, parameters)
  const ticked = new Set(); // paths chosen for comparing, in the order they were chosen
  const unsaved = new Set();
  let current = null; // the cell keyboard actions apply to
  let filter = 'all';

  for (const pic of $$('.cell.none .pic[data-w]')) {
    pic.style.aspectRatio = `${pic.dataset.w} / ${pic.dataset.h}`;
  }
  // How many pictures each row has: its width stops there (review.css, --cols).
  for (const row of $$('.cells')) row.style.setProperty('--cols', String(row.children.length));
  // Each picture's buttons, cloned here rather than sent 5,000 times in the page.
  const acts = $('#acts').content;
  for (const cell of cells) {
    if (!cell.classList.contains('none')) $('figcaption', cell).append(acts.cloneNode(true));
  }
  const fullUrl = (path) => '/files/images/' + encodePath(path);

  // ---- showing a cell's state --------------------------------------------------------

  const markOf = (s) => (s.stale ? 'stale' : s.status || '');

  function paint(path) {
    const cell = byPath.get(path);
    const s = state.get(path);
    if (!cell || !s) return;
    const mark = markOf(s);
    cell.dataset.mark = mark;
    cell.dataset.rating = s.rating == null ? '' : String(s.rating);
    const pic = $('[data-path]', cell);
    if (pic) pic.dataset.status = mark;
    paintControls(cell, s);
    cell.classList.toggle('unsaved', unsaved.has(path));
    cell.classList.toggle('ticked', ticked.has(path));
    const box = $('input[data-act="cmp"]', cell);
    if (box) box.checked = ticked.has(path);
    if (viewer.path === path) showViewer(path);
    const pane = $$('.pane', compare.panes).find((p) => p.dataset.pane === path);
    if (pane) { pane.dataset.mark = mark; paintControls(pane, s); }
  }

  function paintControls(root, s) {
    const fresh = !s.stale;
    for (const b of $$('[data-act="pick"]', root)) b.setAttribute('aria-pressed', String(fresh && s.status === 'pick'));
    for (const b of $$('[data-act="reject"]', root)) b.setAttribute('aria-pressed', String(fresh && s.status === 'reject'));
    for (const b of $$('.stars button', root)) {
      const on = fresh && s.rating != null && Number(b.dataset.act) <= s.rating;
      b.classList.toggle('on', on);
      b.setAttribute('aria-pressed', String(fresh && s.rating === Number(b.dataset.act)));
    }
  }

  function matches(path, f) {
    const s = state.get(path);
    const cell = byPath.get(path);
    if (f === 'all') return true;
    if (!s || !cell || cell.classList.contains('none')) return false;
    if (f === 'stale') return s.stale;
    if (s.stale) return false;
    if (f === 'pick' || f === 'reject') return s.status === f;
    if (f === 'unrated') return s.status == null && s.rating == null;
    return true;
  }

  function updateCounts() {
    const n = { all: 0, pick: 0, reject: 0, unrated: 0, stale: 0, rated: 0 };
    for (const [path, s] of state) {
      if (byPath.get(path).classList.contains('none')) { n.stale += s.stale ? 1 : 0; continue; }
      n.all += 1;
      if (s.stale) { n.stale += 1; continue; }
      if (s.status === 'pick') n.pick += 1;
      if (s.status === 'reject') n.reject += 1;
      if (s.rating != null) n.rated += 1;
      if (s.status == null && s.rating == null) n.unrated += 1;
    }
    for (const b of $$('[data-count]')) b.textContent = String(n[b.dataset.count]);
    const saveState = $('#save-state');
    if (saveState) {
      saveState.textContent = unsaved.size ? `· ${unsaved.size} change${unsaved.size === 1 ? '' : 's'} NOT saved` : '';
      saveState.classList.toggle('bad', unsaved.size > 0);
    }
    const open = $('#compare-open');
    if (open) { open.disabled = ticked.size < 2; $('#compare-n').textContent = String(ticked.size); }
  }

  function applyFilter(f) {
    filter = f;
    document.body.dataset.filter = f;
    for (const b of $$('.filters button')) b.setAttribute('aria-pressed', String(b.dataset.filter === f));
    for (const cell of cells) cell.hidden = !matches(cell.dataset.cell, f);
    for (const hole of $$('.hole')) hole.hidden = f !== 'all';
    for (const row of $$('.row')) row.hidden = !$$('figure.cell', row).some((c) => !c.hidden);
    for (const block of $$('.block')) block.hidden = !$$('.row', block).some((r) => !r.hidden);
    const none = $('#no-match');
    if (none) none.hidden = cells.length === 0 || cells.some((c) => !c.hidden);
    if (current && current.hidden) setCurrent(visible()[0] || null, false);
  }

  // ---- saving ------------------------------------------------------------------------

  const chains = new Map(); // path -> the promise of its last save: one path saves in order
  const inflight = new Map(); // path -> saves not answered yet

  function change(path, fields) {
    const s = state.get(path);
    const cell = byPath.get(path);
    if (!s || !cell || cell.classList.contains('none')) return;
    // A decision on a stale entry starts afresh: the old one was about another picture.
    const next = {
      status: 'status' in fields ? fields.status : (s.stale ? null : s.status),
      rating: 'rating' in fields ? fields.rating : (s.stale ? null : s.rating),
      stale: false,
    };
    state.set(path, next);
    paint(path);
    updateCounts();
    save(path, fields);
  }

  function save(path, fields) {
    inflight.set(path, (inflight.get(path) || 0) + 1);
    const run = () => fetch(withToken('/api/picks/' + encodePath(path)), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(fields),
      cache: 'no-store',
    }).then(async (resp) => {
      let doc = null;
      try { doc = await resp.json(); } catch (e) { doc = null; }
      if (!resp.ok) throw new Error((doc && doc.error) || `the server answered ${resp.status}`);
      return doc;
    });
    const done = (chains.get(path) || Promise.resolve()).then(run).then((doc) => {
      const left = inflight.get(path) - 1;
      inflight.set(path, left);
      unsaved.delete(path);
      // The stored entry is the truth (another tab or the command line may have set the
      // other field meanwhile), unless a later change of ours is still on its way.
      if (left === 0 && doc) state.set(path, { status: doc.status, rating: doc.rating, stale: doc.stale });
      paint(path);
      updateCounts();
    }, (err) => {
      inflight.set(path, inflight.get(path) - 1);
      unsaved.add(path);
      paint(path);
      updateCounts();
      toast(`Not saved: ${path}: ${err.message || err}`, () => save(path, fields));
    });
    chains.set(path, done);
  }

  function toast(message, retry) {
    const box = $('#toasts');
    const text = el('p', { text: message });
    const node = el('div', { class: 'toast', role: 'alert' }, text);
    if (retry) {
      node.append(el('button', { type: 'button', text: 'Retry', onclick: () => { node.remove(); retry(); } }));
    }
    node.append(el('button', { type: 'button', text: 'Dismiss', 'aria-label': 'Dismiss', onclick: () => node.remove() }));
    box.append(node);
    while (box.children.length > 4) box.firstElementChild.remove();
  }

  function info(message) {
    const box = $('#toasts');
    const node = el('div', { class: 'toast info', role: 'status' }, el('p', { text: message }));
    box.append(node);
    setTimeout(() => node.remove(), 3500);
  }

  // ---- actions, shared by keys, clicks and every view ---------------------------------

  function act(path, what, { toggle = false } = {}) {
    const s = state.get(path);
    if (!s) return;
    const fresh = !s.stale;
    if (what === 'pick' || what === 'reject') {
      const again = toggle && fresh && s.status === what;
      change(path, { status: again ? null : what });
    } else if (what === 'clear') {
      change(path, { status: null, rating: null });
    } else if (what === 'cmp') {
      tick(path);
    } else if (/^[1-5]$/.test(what)) {
      const r = Number(what);
      change(path, { rating: toggle && fresh && s.rating === r ? null : r });
    }
  }

  function tick(path, on) {
    const want = on === undefined ? !ticked.has(path) : on;
    if (want) ticked.add(path); else ticked.delete(path);
    paint(path);
    updateCounts();
    if (!compare.node.hidden) renderCompare();
  }

  // ---- moving ------------------------------------------------------------------------

  const visible = () => cells.filter((c) => !c.hidden);

  function setCurrent(cell, focus = true) {
    if (current) { current.classList.remove('current'); current.tabIndex = -1; }
    current = cell;
    if (!cell) return;
    cell.classList.add('current');
    cell.tabIndex = 0;
    if (focus) {
      cell.focus({ preventScroll: true });
      cell.scrollIntoView({ block: 'nearest', inline: 'nearest' });
    }
  }

  function step(delta) {
    const list = visible();
    if (!list.length) return null;
    const i = current ? list.indexOf(current) : -1;
    if (i < 0) return list[0];
    return list[Math.max(0, Math.min(list.length - 1, i + delta))];
  }

  // Up and down go to the nearest picture (by its centre) on the line above or below:
  // lines are rows of the sheet, or the wrapped parts of a long row on a narrow screen.
  function vertical(dir) {
    const list = visible();
    if (!current) return list[0] || null;
    const i = list.indexOf(current);
    const here = current.getBoundingClientRect();
    const cx = here.left + here.width / 2;
    let lineTop = null;
    let best = null;
    let bestDx = Infinity;
    for (let j = i + dir; j >= 0 && j < list.length; j += dir) {
      const r = list[j].getBoundingClientRect();
      const beyond = dir > 0 ? r.top > here.top + 4 : r.top < here.top - 4;
      if (!beyond) continue;
      if (lineTop === null) lineTop = r.top;
      else if (Math.abs(r.top - lineTop) > 4) break;
      const dx = Math.abs(r.left + r.width / 2 - cx);
      if (dx < bestDx) { bestDx = dx; best = list[j]; }
    }
    return best || current;
  }

  // ---- the large view ----------------------------------------------------------------

  const viewer = { node: $('#viewer'), path: null, back: null };

  function showViewer(path) {
    const cell = byPath.get(path);
    const img = cell && $('img', cell);
    if (!img) return;
    const item = items.get(path);
    const s = state.get(path);
    const list = visible();
    viewer.path = path;
    $('#v-pos').textContent = `${list.indexOf(cell) + 1} / ${list.length}`;
    $('#v-title').textContent = (item && item.label) || img.alt || path;
    const big = $('#v-img');
    if (big.dataset.path !== path) {
      big.dataset.path = path;
      big.alt = img.alt;
      big.src = img.currentSrc || img.src; // the thumbnail at once, the full image when loaded
      const full = new Image();
      const url = withToken(fullUrl(path));
      full.onload = () => { if (viewer.path === path) big.src = url; };
      full.src = url;
    }
    if ($('#v-snippet').dataset.path !== path) {
      $('#v-more').hidden = true; // another image: its own snippet, when asked
      $('#v-snippet').dataset.path = path;
      $('#v-snippet').textContent = '';
    }
    const req = (item && item.request) || {};
    $('#v-prompt').textContent = req.prompt || (item ? '' : 'loading…');
    $('#v-negative').textContent = req.negative_prompt || '(none)';
    $('#v-seed').textContent = item ? String(item.seed) : '';
    $('#v-params').textContent = item ? item.params : '';
    const vars = item ? Object.entries(item.vars).map(([k, v]) => `${k} = ${v}`).join(', ') : '';
    $('#v-vars').textContent = vars || '(none)';
    $('#v-model').textContent = req.model || '';
    const file = $('#v-file');
    file.textContent = 'images/' + path;
    file.href = withToken(fullUrl(path));
    $('#v-key').textContent = item ? item.key : '';
    paintControls(viewer.node, s);
    $('input[data-act="cmp"]', viewer.node).checked = ticked.has(path);
    const flag = $('#v-flag');
    flag.className = 'flag';
    if (unsaved.has(path)) { flag.textContent = 'The last change was NOT saved.'; flag.classList.add('bad'); }
    else if (s.stale) {
      flag.textContent = 'Stale: decided on an earlier prompt for this path; decide again or clear it.';
      flag.classList.add('stale');
    } else flag.textContent = s.status === 'pick' ? 'Picked.' : s.status === 'reject' ? 'Rejected.' : '';
  }

  // "More like this": the server copies the image beside the manifest (a file to commit:
  // outputs/ is not) and answers the snippet of a variations job of that copy.
  function showMore(path) {
    if (!path) return;
    fetch(withToken('/api/more/' + encodePath(path)), { method: 'POST', cache: 'no-store' })
      .then(async (resp) => {
        let doc = null;
        try { doc = await resp.json(); } catch (e) { doc = null; }
        if (!resp.ok) throw new Error((doc && doc.error) || `the server answered ${resp.status}`);
        return doc;
      }).then((doc) => {
        if (viewer.path !== path) return; // moved on meanwhile: that picture's, when asked
        showSnippet(doc.snippet);
        $('#v-input-note').textContent = doc.written ? 'Saved the image as' : 'The image is saved as';
        $('#v-input').textContent = doc.input;
        $('#v-more').hidden = false;
        copyMore();
      }, (err) => toast(`More like this: ${err.message || err}`));
  }

  // Each run of non-spaces in a span that never wraps: a line breaks at its spaces only,
  // never inside an id or a path (at its hyphens or slashes); one too long scrolls.
  function showSnippet(text) {
    const pre = $('#v-snippet');
    pre.replaceChildren();
    for (const part of text.split(/(\s+)/)) {
      if (!part) continue;
      pre.append(/\s/.test(part) ? document.createTextNode(part) : el('span', { class: 'w', text: part }));
    }
  }

  function copyMore() {
    const text = $('#v-snippet').textContent;
    if (!text) return;
    const clip = navigator.clipboard;
    if (!clip || !clip.writeText) { info('Select the text to copy it.'); return; }
    clip.writeText(text).then(() => info('Copied: paste it under jobs: in the manifest.'),
      () => info('Select the text to copy it (the browser refused the clipboard).'));
  }

  function openViewer(cell) {
    if (!cell || cell.classList.contains('none')) return;
    setCurrent(cell, false);
    viewer.back = document.activeElement;
    viewer.node.hidden = false;
    document.body.style.overflow = 'hidden';
    showViewer(cell.dataset.cell);
    $('[data-v="close"]', viewer.node).focus({ preventScroll: true });
    viewer.node.scrollTop = 0;
  }

  function closeViewer() {
    viewer.node.hidden = true;
    viewer.path = null;
    document.body.style.overflow = '';
    if (current) setCurrent(current);
  }

  function viewerStep(delta) {
    const list = visible().filter((c) => !c.classList.contains('none'));
    const i = list.findIndex((c) => c.dataset.cell === viewer.path);
    const next = list[Math.max(0, Math.min(list.length - 1, i + delta))];
    if (next) { setCurrent(next, false); showViewer(next.dataset.cell); }
  }

  // ---- comparing ---------------------------------------------------------------------

  const compare = { node: $('#compare'), panes: $('#c-panes'), active: 0 };

  function renderCompare() {
    const paths = Array.from(ticked);
    compare.panes.replaceChildren();
    $('#c-n').textContent = String(paths.length);
    paths.forEach((path, k) => {
      const cell = byPath.get(path);
      const img = $('img', cell);
      const item = items.get(path);
      const s = state.get(path);
      const stars = el('span', { class: 'stars' });
      for (let r = 1; r <= 5; r += 1) {
        stars.append(el('button', { type: 'button', 'data-act': String(r), 'aria-label': `Rate ${r}`, title: `Rate ${r}`, text: '★' }));
      }
      const big = el('img', { alt: img.alt, src: withToken(fullUrl(path)) });
      const caption = el('figcaption', {},
        el('span', { class: 'lbl', text: (item && item.label) || path }),
        el('button', { type: 'button', class: 'act pick', 'data-act': 'pick', title: 'Pick (P)', text: '✓ Pick' }),
        el('button', { type: 'button', class: 'act reject', 'data-act': 'reject', title: 'Reject (X)', text: '✕ Reject' }),
        stars,
        el('button', { type: 'button', class: 'act', 'data-act': 'cmp', title: 'Remove from the comparison (C)', text: 'Remove' }));
      const pane = el('figure', { class: 'pane' + (k === compare.active ? ' active' : ''), 'data-pane': path },
        el('div', { class: 'c-img-box' }, big), caption);
      pane.dataset.mark = markOf(s);
      paintControls(pane, s);
      pane.addEventListener('click', () => setActivePane(k));
      compare.panes.append(pane);
    });
    if (paths.length < 2 && !compare.node.hidden) closeCompare();
  }

  function setActivePane(k) {
    const panes = $$('.pane', compare.panes);
    if (!panes.length) return;
    compare.active = Math.max(0, Math.min(panes.length - 1, k));
    panes.forEach((p, j) => p.classList.toggle('active', j === compare.active));
  }

  function openCompare() {
    if (ticked.size < 2) { info('Tick at least two pictures (C or the box under each) to compare them.'); return; }
    compare.active = 0;
    compare.node.hidden = false;
    document.body.style.overflow = 'hidden';
    renderCompare();
    $('[data-c="close"]', compare.node).focus({ preventScroll: true });
  }

  function closeCompare() {
    compare.node.hidden = true;
    document.body.style.overflow = '';
    if (current) setCurrent(current);
  }

  // ---- events ------------------------------------------------------------------------

  const typing = (t) => t && (t.tagName === 'INPUT' && t.type !== 'checkbox' || t.tagName === 'TEXTAREA' || t.isContentEditable);

  function keyAction(e) {
    if (e.key === 'p' || e.key === 'P') return 'pick';
    if (e.key === 'x' || e.key === 'X') return 'reject';
    if (/^[1-5]$/.test(e.key)) return e.key;
    if (e.key === '0' || e.key === 'Backspace' || e.key === 'Delete') return 'clear';
    if (e.key === 'c' || e.key === 'C') return 'cmp';
    return null;
  }

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    const what = keyAction(e);
    if (!compare.node.hidden) {
      const panes = $$('.pane', compare.panes);
      if (e.key === 'Escape') closeCompare();
      else if (e.key === 'ArrowRight') setActivePane(compare.active + 1);
      else if (e.key === 'ArrowLeft') setActivePane(compare.active - 1);
      else if (what && panes[compare.active]) act(panes[compare.active].dataset.pane, what);
      else return;
      e.preventDefault();
      return;
    }
    if (!viewer.node.hidden) {
      if (e.key === 'Escape') closeViewer();
      else if (e.key === 'ArrowRight' || e.key === 'ArrowDown') viewerStep(1);
      else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') viewerStep(-1);
      else if (what) act(viewer.path, what);
      else return;
      e.preventDefault();
      return;
    }
    if (e.key === '?') { toggleHelp(); e.preventDefault(); return; }
    if (e.key === 'v' || e.key === 'V') { openCompare(); e.preventDefault(); return; }
    if (e.key === 'Escape') { $('#help').hidden = true; return; }
    let target = null;
    if (e.key === 'ArrowRight') target = step(1);
    else if (e.key === 'ArrowLeft') target = step(-1);
    else if (e.key === 'ArrowDown') target = vertical(1);
    else if (e.key === 'ArrowUp') target = vertical(-1);
    else if (e.key === 'Home') target = visible()[0];
    else if (e.key === 'End') target = visible().slice(-1)[0];
    if (target) { setCurrent(target); e.preventDefault(); return; }
    if (!current && (what || e.key === 'Enter')) { setCurrent(visible()[0] || null); }
    if (!current) return;
    if (e.key === 'Enter') { openViewer(current); e.preventDefault(); return; }
    if (what) { act(current.dataset.cell, what); e.preventDefault(); }
  });

  document.addEventListener('click', (e) => {
    const t = e.target;
    const filterButton = t.closest('.filters button');
    if (filterButton) { applyFilter(filterButton.dataset.filter); return; }
    const actButton = t.closest('[data-act]');
    if (actButton && actButton.tagName === 'INPUT') return; // checkboxes speak on change
    if (actButton) {
      const owner = t.closest('[data-cell], [data-pane], #viewer');
      const path = owner && (owner.dataset.cell || owner.dataset.pane || viewer.path);
      if (path) {
        if (owner.dataset.cell) setCurrent(owner, false);
        act(path, actButton.dataset.act, { toggle: true });
      }
      return;
    }
    const pic = t.closest('.cell .pic');
    if (pic) { openViewer(pic.closest('.cell')); return; }
    const cell = t.closest('figure.cell');
    if (cell) { setCurrent(cell); return; }
    const v = t.closest('[data-v]');
    if (v) {
      if (v.dataset.v === 'close') closeViewer();
      else if (v.dataset.v === 'more') showMore(viewer.path);
      else if (v.dataset.v === 'copy') copyMore();
      else viewerStep(v.dataset.v === 'next' ? 1 : -1);
      return;
    }
    const c = t.closest('[data-c]');
    if (c) {
      if (c.dataset.c === 'close') closeCompare();
      else { for (const p of Array.from(ticked)) tick(p, false); closeCompare(); }
      return;
    }
    if (t.closest('#compare-open')) { openCompare(); return; }
    if (t.closest('#help-open')) toggleHelp();
    if (t === viewer.node || t.classList.contains('v-stage')) closeViewer();
  });

  document.addEventListener('change', (e) => {
    const box = e.target.closest('input[data-act="cmp"]');
    if (!box) return;
    const owner = box.closest('[data-cell], #viewer');
    const path = owner && (owner.dataset.cell || viewer.path);
    if (path) tick(path, box.checked);
  });

  // A thumbnail that cannot be shown falls back to the image itself, once.
  document.addEventListener('error', (e) => {
    const img = e.target;
    if (!(img instanceof HTMLImageElement) || !img.dataset.path || !img.closest('.cell')) return;
    if (!img.dataset.fellBack) {
      img.dataset.fellBack = '1';
      img.src = withToken(fullUrl(img.dataset.path));
    } else {
      img.closest('.cell').classList.add('broken');
      img.alt = 'image unreadable: ' + img.alt;
    }
  }, true);

  function toggleHelp() {
    const help = $('#help');
    help.hidden = !help.hidden;
    $('#help-open').setAttribute('aria-expanded', String(!help.hidden));
  }

  // ---- the details of every image (prompt, seed, parameters) --------------------------

  fetch(withToken('/api/items'), { cache: 'no-store' }).then(async (resp) => {
    const doc = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error((doc && doc.error) || `the server answered ${resp.status}`);
    for (const item of doc) {
      items.set(item.path, item);
      const s = state.get(item.path);
      const same = s && s.status === item.status && s.rating === item.rating && s.stale === item.stale;
      if (s && !same && !unsaved.has(item.path) && !inflight.get(item.path)) {
        state.set(item.path, { status: item.status, rating: item.rating, stale: item.stale });
        paint(item.path);
      }
    }
    updateCounts();
    if (viewer.path) showViewer(viewer.path);
    document.body.dataset.items = 'loaded';
  }).catch((err) => {
    document.body.dataset.items = 'failed';
    const banner = $('#items-problem');
    banner.textContent = `Could not load the images' details: ${err.message || err}`;
    banner.hidden = false;
  });

  for (const [path, s] of state) {
    if (s.status || s.rating != null) paintControls(byPath.get(path), s);
  }
  updateCounts();
  if (cells.length) setCurrent(cells.find((c) => !c.classList.contains('none')) || cells[0], false);
})();
