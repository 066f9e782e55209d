/* unimat-dist crystal cards: the card grid shared by the static gallery and the service page.
 * Part of unimat-dist (same licence as the package). Needs viewer.js (UnimatViewer) loaded first.
 *
 * API (global `UnimatCards`):
 *   UnimatCards.renderCards(container, crystals, options) -> [card elements]
 *       Replaces the container's children with one `.um-card` per crystal (options.append: keep them).
 *       crystal: JSON object with the per-crystal fact keys (formula, num_atoms, elements, spacegroup_symbol,
 *       spacegroup_number, density, volume_per_atom, min_distance, min_distance_ratio, validity flags such as
 *       valid / structure_valid / composition_valid (or a `validity` object of booleans), energies such as
 *       energy_per_atom / e_form / e_above_hull) and `structure` ({lattice: {matrix}, species, frac_coords |
 *       cart_coords}; needed for canvas thumbnails and the viewer) and optionally `id`, `thumbnail` (image URL).
 *       options: {
 *         thumbnail: function (crystal) -> URL or null   (default: crystal.thumbnail; null -> the structure is
 *                    drawn on a canvas when the card scrolls into view),
 *         onOpen: function (crystal, index, event)        (default: UnimatViewer.openViewer(crystal)),
 *         energyKeys: [key, ...]                          (default: numeric keys that look like energies),
 *         extra: function (crystal) -> Node | string | null   (appended to the card body),
 *         append: false, startIndex: 0                     (index passed to onOpen = startIndex + position)
 *       }
 *   UnimatCards.validityFlags(crystal) -> [[name, bool], ...]
 *   UnimatCards.energies(crystal, keys) -> [[label, value, key], ...]
 *   UnimatCards.formulaHTML(formula) -> HTML with subscripts
 *   UnimatCards.isValid(crystal) -> crystal.valid when boolean, else decoded && structure_valid &&
 *       composition_valid over the boolean ones present, null when none is (too_close is shown as the
 *       'distances' flag but does not enter validity, as in CDVAE)
 * Each card carries data-index, data-formula and data-spacegroup attributes; its parts have the classes
 * um-thumb, um-formula, um-sg, um-flag (um-ok / um-bad), um-energy, um-legend (tests select on these).
 */
(function (global) {
  'use strict';

  var FLAG_KEYS = ['valid', 'structure_valid', 'composition_valid', 'struct_valid', 'comp_valid', 'decoded',
                   'distance_ok', 'matches_request'];
  var FLAG_LABELS = {valid: 'valid', structure_valid: 'structure', composition_valid: 'composition',
                     struct_valid: 'structure', comp_valid: 'composition', decoded: 'decoded',
                     distance_ok: 'distances', matches_request: 'matches request'};
  var ENERGY_LABELS = {e_form_per_atom: 'E_form', energy_per_atom: 'E/atom', energy: 'E', e_form: 'E_form', formation_energy_per_atom: 'E_form',
                       e_above_hull: 'E_hull', e_hull: 'E_hull', energy_above_hull: 'E_hull', relaxed_energy_per_atom: 'E_relaxed/atom'};
  var ENERGY_RE = /(energy|^e_|_e$|hull|e_form)/i;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function formulaHTML(f) { return esc(f || '?').replace(/(\d+(\.\d+)?)/g, '<sub>$1</sub>'); }

  function validityFlags(c) {
    var out = [], seen = {};
    function add(k, v, label) {
      if (typeof v !== 'boolean' || seen[label]) return;
      seen[label] = 1;
      out.push([label, v, k]);
    }
    FLAG_KEYS.forEach(function (k) { if (k in c) add(k, c[k], FLAG_LABELS[k]); });
    if (typeof c.too_close === 'boolean') add('too_close', !c.too_close, 'distances');
    if (c.validity && typeof c.validity === 'object') {
      Object.keys(c.validity).forEach(function (k) { add('validity.' + k, c.validity[k], k.replace(/_valid$/, '').replace(/_/g, ' ')); });
    }
    Object.keys(c).forEach(function (k) {
      if (/_valid$|_ok$/.test(k)) add(k, c[k], k.replace(/_valid$|_ok$/, '').replace(/_/g, ' '));
    });
    return out;
  }

  function isValid(c) {
    if (typeof c.valid === 'boolean') return c.valid;
    if (c.validity && typeof c.validity.valid === 'boolean') return c.validity.valid;
    var keys = ['decoded', 'structure_valid', 'composition_valid', 'struct_valid', 'comp_valid'];
    var flags = keys.filter(function (k) { return typeof c[k] === 'boolean'; });
    if (!flags.length) return null;
    return flags.every(function (k) { return c[k]; });
  }

  function energyKeysOf(c) {
    return Object.keys(c).filter(function (k) {
      return typeof c[k] === 'number' && ENERGY_RE.test(k) && k !== 'spacegroup_number';
    });
  }
  function energies(c, keys) {
    var src = c.energies && typeof c.energies === 'object' ? Object.assign({}, c, c.energies) : c;
    keys = keys || energyKeysOf(src);
    return keys.filter(function (k) { return typeof src[k] === 'number' && isFinite(src[k]); }).map(function (k) {
      return [ENERGY_LABELS[k] || k, src[k], k];
    });
  }

  function fmtNum(v, d) { return (v === null || v === undefined || !isFinite(v)) ? '\u2013' : Number(v).toFixed(d); }

  var observer = null;
  function lazyCanvas(canvas, crystal) {
    canvas._umCrystal = crystal;
    if (!('IntersectionObserver' in global)) { drawThumb(canvas); return; }
    if (!observer) {
      observer = new IntersectionObserver(function (entries) {
        entries.forEach(function (e) {
          if (e.isIntersecting) { observer.unobserve(e.target); drawThumb(e.target); }
        });
      }, {rootMargin: '200px'});
    }
    observer.observe(canvas);
  }
  function drawThumb(canvas) {
    try { global.UnimatViewer.renderStatic(canvas, canvas._umCrystal, {background: '#ffffff'}); }
    catch (err) { canvas.setAttribute('data-error', String(err)); }
  }

  function card(c, index, options) {
    var d = document.createElement('div');
    var valid = isValid(c);
    d.className = 'um-card' + (valid === false ? ' um-invalid' : '');
    d.setAttribute('data-index', index);
    d.setAttribute('data-formula', c.formula || '');
    d.setAttribute('data-spacegroup', c.spacegroup_symbol || '');
    d.tabIndex = 0;
    var url = options.thumbnail ? options.thumbnail(c) : (typeof c.thumbnail === 'string' ? c.thumbnail : null);
    var thumb;
    if (url) {
      thumb = document.createElement('img');
      thumb.loading = 'lazy';
      thumb.decoding = 'async';
      thumb.alt = (c.formula || 'crystal') + ' structure';
      thumb.width = 180; thumb.height = 180;
      thumb.src = url;
    } else {
      thumb = document.createElement('canvas');
      if (c.structure) lazyCanvas(thumb, c);
    }
    thumb.className = 'um-thumb';
    d.appendChild(thumb);
    var body = document.createElement('div');
    body.className = 'um-card-body';
    var sg = c.spacegroup_symbol ? esc(c.spacegroup_symbol) + (c.spacegroup_number ? ' <span class="um-muted">(' + esc(c.spacegroup_number) + ')</span>' : '') : '<span class="um-muted">space group ?</span>';
    var html = '<div class="um-formula" title="' + esc(c.formula || '') + '">' + formulaHTML(c.formula) + '</div>' +
      '<div class="um-sg">' + sg + '</div>' +
      '<div class="um-stats">' + (c.num_atoms !== undefined ? esc(c.num_atoms) + ' atoms' : '') +
      (c.density !== undefined && c.density !== null ? ' \u00b7 ' + fmtNum(c.density, 2) + ' g/cm\u00b3' : '') +
      (c.min_distance !== undefined && c.min_distance !== null ? ' \u00b7 d<sub>min</sub> ' + fmtNum(c.min_distance, 2) + ' \u00c5' : '') +
      '</div>';
    var flags = validityFlags(c);
    if (flags.length) {
      html += '<div class="um-flags">' + flags.map(function (f) {
        return '<span class="um-flag ' + (f[1] ? 'um-ok' : 'um-bad') + '" data-flag="' + esc(f[2]) + '">' +
          (f[1] ? '\u2713 ' : '\u2717 ') + esc(f[0]) + '</span>';
      }).join('') + '</div>';
    }
    var en = energies(c, options.energyKeys);
    if (en.length) {
      html += '<div class="um-energies">' + en.map(function (e) {
        return '<span class="um-energy" data-key="' + esc(e[2]) + '">' + esc(e[0]) + ' ' + fmtNum(e[1], 3) + '</span>';
      }).join(' ') + ' <span class="um-muted">eV/atom</span></div>';
    }
    if (c.id !== undefined) html += '<div class="um-id um-muted">' + esc(c.id) + '</div>';
    body.innerHTML = html;
    var species = c.elements || (c.structure && c.structure.species) || [];
    if (species.length && global.UnimatViewer) body.appendChild(global.UnimatViewer.legend(species));
    if (options.extra) {
      var x = options.extra(c);
      if (x) body.appendChild(typeof x === 'string' ? document.createTextNode(x) : x);
    }
    d.appendChild(body);
    var open = function (ev) {
      if (ev.target && ev.target.closest && ev.target.closest('a')) return;
      if (options.onOpen) options.onOpen(c, index, ev);
      else global.UnimatViewer.openViewer(c);
    };
    d.addEventListener('click', open);
    d.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') open(ev); });
    return d;
  }

  /** Render one card per crystal into `container` (see the header). */
  function renderCards(container, crystals, options) {
    options = options || {};
    if (!options.append) container.innerHTML = '';
    var frag = document.createDocumentFragment(), cards = [], start = options.startIndex || 0;
    crystals.forEach(function (c, i) { var e = card(c, start + i, options); cards.push(e); frag.appendChild(e); });
    container.appendChild(frag);
    return cards;
  }

  global.UnimatCards = {renderCards: renderCards, validityFlags: validityFlags, energies: energies,
                        energyKeys: energyKeysOf, formulaHTML: formulaHTML, isValid: isValid, escape: esc};
})(typeof window !== 'undefined' ? window : this);
