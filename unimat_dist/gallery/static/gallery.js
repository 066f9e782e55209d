/* unimat-dist static gallery page: filters, sorting, pagination and the side-by-side mode over the card grid
 * (cards.js) and the viewer (viewer.js). Part of unimat-dist (same licence as the package).
 *
 * Data: data/crystals.js sets window.UNIMAT_GALLERY_DATA = {meta, crystals: [facts...], references: [...],
 * references_by_formula: {formula: [index into references]}}; the structures come in chunks
 * (data/structures-NNNNN.js calls UnimatGallery.addStructures(offset, [structure...])) loaded by script tag
 * when a crystal is opened, so the page opens without them (works from file://, where fetch() is blocked).
 * window.UnimatGallery.firstCardsAt holds performance.now() when the first cards were in the DOM.
 */
(function (global) {
  'use strict';
  var D = null, structures = {}, chunkWaiters = {}, state = null, refsBy = {};
  var $ = function (id) { return document.getElementById(id); };

  function addStructures(offset, arr) {
    arr.forEach(function (s, i) { structures[offset + i] = s; });
    var w = chunkWaiters[offset];
    if (w) { delete chunkWaiters[offset]; w.forEach(function (fn) { fn(); }); }
  }

  function withStructure(index, fn) {
    if (structures[index] !== undefined) return fn(structures[index]);
    var chunkSize = D.meta.chunk, k = Math.floor(index / chunkSize), offset = k * chunkSize;
    var first = !chunkWaiters[offset];
    (chunkWaiters[offset] = chunkWaiters[offset] || []).push(function () { fn(structures[index]); });
    if (first) {
      var s = document.createElement('script');
      s.src = D.meta.chunks[k];
      s.onerror = function () { alert('could not load ' + D.meta.chunks[k]); };
      document.head.appendChild(s);
    }
  }

  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }

  function energyKeys() {
    var keys = {};
    D.crystals.slice(0, 2000).forEach(function (c) { UnimatCards.energyKeys(c).forEach(function (k) { keys[k] = 1; }); });
    return Object.keys(keys);
  }

  function option(sel, value, text) {
    var o = document.createElement('option');
    o.value = value; o.textContent = text;
    sel.appendChild(o);
  }

  function setupControls() {
    var sgs = {};
    D.crystals.forEach(function (c) {
      if (!c.spacegroup_symbol) return;
      var k = c.spacegroup_symbol;
      sgs[k] = sgs[k] || {n: 0, number: c.spacegroup_number || 0};
      sgs[k].n++;
    });
    Object.keys(sgs).sort(function (a, b) { return sgs[a].number - sgs[b].number || (a < b ? -1 : 1); }).forEach(function (k) {
      option($('um-f-sg'), k, k + (sgs[k].number ? ' (' + sgs[k].number + ')' : '') + ' \u00b7 ' + sgs[k].n);
    });
    var sets = {};
    D.crystals.forEach(function (c) { if (c.set) sets[c.set] = (sets[c.set] || 0) + 1; });
    if (Object.keys(sets).length) {
      $('um-set-label').hidden = false;
      Object.keys(sets).sort().forEach(function (k) { option($('um-f-set'), k, k + ' \u00b7 ' + sets[k]); });
    }
    var ek = energyKeys();
    if (ek.length) {
      $('um-energy-label').hidden = false;
      ek.forEach(function (k) { option($('um-f-ekey'), k, k.replace(/_/g, ' ')); });
    }
    [['', 'run order'], ['formula', 'formula'], ['spacegroup_number', 'space group number'], ['num_atoms', 'atoms in cell'],
     ['density', 'density'], ['volume_per_atom', 'volume per atom'], ['min_distance_ratio', 'shortest distance / radii']]
      .concat(ek.map(function (k) { return [k, k.replace(/_/g, ' ')]; }))
      .forEach(function (o) { option($('um-sort'), o[0], o[1]); });
    if (D.references && D.references.length) {
      $('um-mode-label').hidden = false;
      $('um-mode').value = 'grid';
    }
    ['um-f-formula', 'um-f-elements', 'um-f-emin', 'um-f-emax'].forEach(function (id) {
      $(id).addEventListener('input', function () { state.page = 0; update(); });
    });
    ['um-f-sg', 'um-f-valid', 'um-f-set', 'um-f-ekey', 'um-sort', 'um-sort-dir', 'um-mode'].forEach(function (id) {
      $(id).addEventListener('change', function () { state.page = 0; update(); });
    });
  }

  function readFilters() {
    var els = $('um-f-elements').value.split(/[\s,;]+/).filter(Boolean).map(function (e) {
      return e.charAt(0).toUpperCase() + e.slice(1).toLowerCase();
    });
    return {
      formula: $('um-f-formula').value.trim().toLowerCase(), elements: els, sg: $('um-f-sg').value,
      valid: $('um-f-valid').value, set: $('um-f-set').value, ekey: $('um-f-ekey').value,
      emin: $('um-f-emin').value === '' ? null : +$('um-f-emin').value,
      emax: $('um-f-emax').value === '' ? null : +$('um-f-emax').value,
      sort: $('um-sort').value, dir: +$('um-sort-dir').value, mode: $('um-mode').value
    };
  }

  function matches(c, f) {
    if (f.formula && String(c.formula || '').toLowerCase().indexOf(f.formula) < 0) return false;
    if (f.elements.length) {
      var have = c.elements || [];
      for (var i = 0; i < f.elements.length; i++) if (have.indexOf(f.elements[i]) < 0) return false;
    }
    if (f.sg && c.spacegroup_symbol !== f.sg) return false;
    if (f.set && c.set !== f.set) return false;
    if (f.valid) {
      var v = UnimatCards.isValid(c);
      if (f.valid === 'valid' ? v !== true : v !== false) return false;
    }
    if (f.ekey && (f.emin !== null || f.emax !== null)) {
      var e = num(c[f.ekey]);
      if (e === null) return false;
      if (f.emin !== null && e < f.emin) return false;
      if (f.emax !== null && e > f.emax) return false;
    }
    return true;
  }

  function filtered(f) {
    var idx = [];
    for (var i = 0; i < D.crystals.length; i++) if (matches(D.crystals[i], f)) idx.push(i);
    if (f.sort) {
      var key = f.sort, dir = f.dir;
      idx.sort(function (a, b) {
        var x = D.crystals[a][key], y = D.crystals[b][key];
        var xm = x === null || x === undefined, ym = y === null || y === undefined;
        if (xm || ym) return xm === ym ? a - b : (xm ? 1 : -1);  // missing values last
        if (typeof x === 'string' || typeof y === 'string') { x = String(x); y = String(y); return (x < y ? -1 : x > y ? 1 : a - b) * dir; }
        return (x - y) * dir || a - b;
      });
    } else if (f.dir < 0) idx.reverse();
    return idx;
  }

  function open(index) {
    var c = D.crystals[index];
    withStructure(index, function (s) {
      if (!s) { alert('no structure for ' + c.id + (c.error ? ': ' + c.error : '')); return; }
      var full = Object.assign({}, c, {structure: s});
      delete full.thumbnail; delete full.hash; delete full.files;
      var downloads = [];
      if (c.files) Object.keys(c.files).forEach(function (k) {
        downloads.push({label: 'run file (' + k.toUpperCase() + ')', href: c.files[k], filename: c.files[k].split('/').pop()});
      });
      var refs = refsBy[c.formula] || [];
      var opts = {downloads: downloads, title: (c.id !== undefined ? c.id + ' \u00b7 ' : '') + (c.formula || '')};
      if (refs.length) {
        var r = Object.assign({}, D.references[refs[0]]);
        delete r.thumbnail; delete r.hash;
        opts.reference = r;
        opts.referenceLabel = 'Reference ' + (r.id || '');
      }
      UnimatViewer.openViewer(full, opts);
    });
  }

  function pager(total, pageSize, unit) {
    var pages = Math.max(1, Math.ceil(total / pageSize));
    state.page = Math.min(state.page, pages - 1);
    ['um-pager-top', 'um-pager-bottom'].forEach(function (id) {
      var p = $(id);
      p.innerHTML = '';
      if (pages <= 1) return;
      var mk = function (label, page, disabled, cls) {
        var b = document.createElement('button');
        b.type = 'button'; b.className = 'um-btn ' + (cls || ''); b.textContent = label; b.disabled = disabled;
        b.addEventListener('click', function () {
          state.page = page;
          update();
          global.scrollTo(0, 0);
          try { global.history.replaceState(null, '', '#page=' + (page + 1)); } catch (e) { /* sandboxed page */ }
        });
        p.appendChild(b);
      };
      mk('\u00ab first', 0, state.page === 0, 'um-first');
      mk('\u2039 prev', state.page - 1, state.page === 0, 'um-prev');
      var s = document.createElement('span');
      s.className = 'um-page-of';
      s.textContent = 'page ' + (state.page + 1) + ' of ' + pages + ' (' + total + ' ' + unit + ')';
      p.appendChild(s);
      mk('next \u203a', state.page + 1, state.page >= pages - 1, 'um-next');
      mk('last \u00bb', pages - 1, state.page >= pages - 1, 'um-last');
    });
  }

  function cardOptions(start) {
    return {startIndex: start || 0, onOpen: function (c) { open(c._i); }};
  }

  function renderGrid(idx) {
    var size = state.pageSize, start = state.page * size;
    pager(idx.length, size, 'crystals');
    var main = $('um-main');
    main.innerHTML = '<div class="um-grid" id="um-grid"></div>';
    var slice = idx.slice(state.page * size, state.page * size + size).map(function (i) { return D.crystals[i]; });
    if (!slice.length) { main.innerHTML = '<div class="um-empty" id="um-grid">No crystal matches the filters.</div>'; return; }
    UnimatCards.renderCards($('um-grid'), slice, cardOptions(start));
    drawMissingThumbnails($('um-grid'));
  }

  // cards without a PNG (a gallery built with --no-thumbnails, or a failed render): draw the structure
  // on the card's canvas once its chunk is loaded
  function drawMissingThumbnails(root) {
    Array.prototype.forEach.call(root.querySelectorAll('.um-card'), function (card) {
      var canvas = card.querySelector('canvas.um-thumb');
      if (!canvas) return;
      var i = +card.getAttribute('data-index');
      withStructure(i, function (s) {
        if (!s || !canvas.isConnected) return;
        try { UnimatViewer.renderStatic(canvas, {structure: s}); canvas.setAttribute('data-drawn', '1'); }
        catch (err) { canvas.setAttribute('data-error', String(err)); }
      });
    });
  }

  function renderPairs(idx) {
    var groups = [], pos = {};
    idx.forEach(function (i) {
      var f = D.crystals[i].formula;
      if (!refsBy[f]) return;
      if (!(f in pos)) { pos[f] = groups.length; groups.push({formula: f, gen: []}); }
      groups[pos[f]].gen.push(i);
    });
    var per = 10;
    pager(groups.length, per, 'compositions with references');
    var main = $('um-main');
    main.innerHTML = '';
    if (!groups.length) { main.innerHTML = '<div class="um-empty">No generated composition among the filtered crystals has a reference crystal.</div>'; return; }
    groups.slice(state.page * per, state.page * per + per).forEach(function (g) {
      var box = document.createElement('section');
      box.className = 'um-group';
      box.setAttribute('data-formula', g.formula);
      box.innerHTML = '<h3>' + UnimatCards.formulaHTML(g.formula) + ' <span class="um-muted">' + g.gen.length +
        ' generated \u00b7 ' + refsBy[g.formula].length + ' reference</span></h3><div class="um-group-cols">' +
        '<div><h4>Generated</h4><div class="um-grid um-gen"></div></div><div><h4>Reference (' +
        UnimatCards.escape(D.meta.reference || '') + ')</h4><div class="um-grid um-ref"></div></div></div>';
      main.appendChild(box);
      UnimatCards.renderCards(box.querySelector('.um-gen'), g.gen.slice(0, 6).map(function (i) { return D.crystals[i]; }), cardOptions());
      drawMissingThumbnails(box.querySelector('.um-gen'));
      UnimatCards.renderCards(box.querySelector('.um-ref'), refsBy[g.formula].map(function (j) { return D.references[j]; }), {
        onOpen: function (r) { var x = Object.assign({}, r); delete x.thumbnail; UnimatViewer.openViewer(x, {label: 'Reference', title: r.id}); }
      });
    });
  }

  function update() {
    var f = readFilters();
    var idx = filtered(f);
    $('um-count').textContent = idx.length + ' of ' + D.crystals.length + ' crystals';
    if (f.mode === 'pairs') renderPairs(idx); else renderGrid(idx);
  }

  function fmtMetric(k, v) {
    if (/validity|valid_rate|^cov_|amsd|match_rate|uniqueness|novelty/.test(k) && v <= 1.0001) return (100 * v).toFixed(1) + ' %';
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3);
  }

  function header() {
    var m = D.meta;
    var n = D.crystals.length, valid = 0, known = 0;
    D.crystals.forEach(function (c) { var v = UnimatCards.isValid(c); if (v !== null) { known++; if (v) valid++; } });
    $('um-subtitle').textContent = n + ' crystals' + (known ? ' \u00b7 ' + valid + ' valid (' + (100 * valid / known).toFixed(1) + ' %)' : '') +
      (m.reference ? ' \u00b7 references: ' + String(m.reference).split('/').slice(-2).join('/') + ' (' + D.references.length + ' crystals of ' + Object.keys(refsBy).length + ' compositions)' : '') +
      ' \u00b7 built ' + m.created_at + ' \u00b7 facts: ' + m.facts_source;
    var box = $('um-metrics');
    (m.metrics || []).forEach(function (g) {
      var d = document.createElement('div');
      d.className = 'um-metric';
      d.setAttribute('data-group', g.group);
      d.innerHTML = '<span class="um-muted">' + UnimatCards.escape(g.group) + ':</span> ' + Object.keys(g.values).map(function (k) {
        return UnimatCards.escape(k) + ' <b>' + fmtMetric(k, g.values[k]) + '</b>';
      }).join(' \u00b7 ');
      box.appendChild(d);
    });
    if (m.metrics_source) {
      var s = document.createElement('div');
      s.className = 'um-muted'; s.style.fontSize = '11px'; s.style.alignSelf = 'center';
      s.textContent = 'from ' + m.metrics_source.split('/').slice(-2).join('/');
      box.appendChild(s);
    }
  }

  function init(data) {
    D = data;
    D.crystals.forEach(function (c, i) { c._i = i; });
    refsBy = D.references_by_formula || {};
    state = {page: 0, pageSize: 60};
    var m = /(?:^|[#&])page=(\d+)/.exec(global.location.hash || '');
    if (m) state.page = Math.max(0, +m[1] - 1);
    var go = function () {
      setupControls();
      header();
      update();
      global.UnimatGallery.firstCardsAt = global.performance ? performance.now() : Date.now();
      global.UnimatGallery.ready = true;
    };
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', go); else go();
  }

  global.UnimatGallery = {init: init, addStructures: addStructures, open: open, update: update,
                          data: function () { return D; }, ready: false};
})(typeof window !== 'undefined' ? window : this);
