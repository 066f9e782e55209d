/* The service's generation page (deploy/page.py serves it at GET /): a form for POST v1/generate on the same
 * origin; each answer becomes a run of gallery cards (UnimatCards, unimat_dist/gallery/static/cards.js) that
 * open the gallery's 3D viewer (UnimatViewer) with CIF/POSCAR downloads. A 4xx answer's error.message is
 * shown next to the field its error.field names (the form-wide slot when it names none).
 * Part of unimat-dist (same licence as the package). No dependencies, no network access beyond this origin.
 */
(function () {
  'use strict';

  var base = location.pathname.replace(/[^/]*$/, '');  // the page's folder: works under any route prefix
  var form = document.getElementById('generate-form');
  var button = document.getElementById('generate');
  var status = document.getElementById('status');
  var runs = document.getElementById('runs');
  var model = null, runCount = 0;
  var FIELDS = ['composition', 'num_samples', 'sampler', 'steps', 'eta', 'noise_scale', 'seed', 'guidance', 'properties'];

  function $(id) { return document.getElementById(id); }
  function esc(s) { return window.UnimatCards.escape(s); }
  function text(el, s) { el.textContent = s == null ? '' : String(s); }

  // ------------------------------------------------------------------ errors next to their field
  function clearErrors() {
    document.querySelectorAll('.pg-error').forEach(function (e) { text(e, ''); });
    document.querySelectorAll('.pg-invalid').forEach(function (e) { e.classList.remove('pg-invalid'); });
    document.querySelectorAll('[aria-invalid]').forEach(function (e) { e.removeAttribute('aria-invalid'); });
  }

  /** The error slot for an API field name: "composition", "steps", "properties.heat_ref" -> that field's
   * slot (properties.* -> the property's own input, marked), anything else -> the form-wide slot. */
  function showError(field, message) {
    var root = field ? String(field).split('.')[0] : '';
    var slot = FIELDS.indexOf(root) >= 0 ? $(root + '-error') : null;
    if (!slot) { text($('form-error'), message); return $('form-error'); }
    text(slot, message);
    var box = slot.closest('.pg-field');
    if (box) box.classList.add('pg-invalid');
    var input = root === 'properties' ? document.querySelector('[data-property="' + String(field).slice(11) + '"]') : $(root);
    if (input) { input.setAttribute('aria-invalid', 'true'); }
    return slot;
  }

  // ------------------------------------------------------------------ the model's limits and defaults
  function stepsPlaceholder() {
    if (!model || !model.defaults) return;
    var d = model.defaults, ddpm = $('sampler').value === 'ddpm';
    $('steps').placeholder = 'default ' + (ddpm ? d.steps_ddpm : d.steps_ddim);
    $('eta').disabled = ddpm;
  }

  function loadModel() {
    return fetch(base + 'v1/model', {headers: {Accept: 'application/json'}}).then(function (r) {
      if (!r.ok) throw new Error('GET v1/model answered ' + r.status);
      return r.json();
    }).then(function (info) {
      model = info;
      var lim = info.limits || {}, spec = info.spec || {};
      var name = String(info.checkpoint || '').split('/').slice(-2).join('/');
      text($('model-info'), 'model ' + name + ' (step ' + info.step + ', ' + Number(info.parameters || 0).toLocaleString() +
           ' parameters, ' + info.device + '), up to ' + lim.max_samples_per_request + ' samples and ' +
           lim.max_steps + ' steps per request' +
           (info.autoguidance ? '; autoguided (weight ' + info.autoguidance.weight + ' against its step-' +
            info.autoguidance.guide_step + ' network)' : ''));
      if (lim.max_samples_per_request) $('num_samples').max = lim.max_samples_per_request;
      if (lim.max_steps) $('steps').max = lim.max_steps;
      if (lim.max_guidance !== undefined) $('guidance').max = lim.max_guidance;
      var els = spec.elements || [];
      if (els.length) {
        text($('composition-hint'), els.length + ' elements: ' + els.join(' ') +
             (spec.max_atoms_per_element ? ' (at most ' + spec.max_atoms_per_element + ' atoms of each)' : ''));
      }
      var props = info.properties || [], ranges = lim.property_ranges || {};
      var holder = $('property-inputs');
      holder.innerHTML = '';
      props.forEach(function (p) {
        var r = ranges[p];
        var label = document.createElement('label');
        label.innerHTML = esc(p) + ' ';
        var input = document.createElement('input');
        input.type = 'number'; input.step = 'any'; input.setAttribute('data-property', p); input.id = 'property-' + p;
        if (r) input.placeholder = Number(r[0]).toPrecision(3) + ' \u2026 ' + Number(r[1]).toPrecision(3);
        label.appendChild(input);
        holder.appendChild(label);
      });
      $('properties').hidden = !props.length;
      var d = info.defaults || {};  // the model's sampling defaults preselected (the checkpoint may carry its own)
      if (d.sampler) $('sampler').value = d.sampler;
      if (typeof d.eta === 'number') $('eta').value = d.eta;
      if (typeof d.noise_scale === 'number') $('noise_scale').value = d.noise_scale;
      stepsPlaceholder();
    }).catch(function (err) { text($('model-info'), 'could not read the model: ' + err.message); });
  }

  // ------------------------------------------------------------------ the request
  /** A number input's value for the JSON body: undefined when empty, else its literal text (integers are kept
   * as typed, so a 19-digit seed is not rounded by a JS number). Throws {field, message} when the browser
   * could not read it as a number. */
  function numberLiteral(input, field) {
    if (input.validity && input.validity.badInput) throw {field: field, message: field + ': not a number'};
    var v = input.value.trim();
    return v === '' ? undefined : v;
  }

  function buildBody() {
    var parts = [], add = function (k, literal) { if (literal !== undefined) parts.push(JSON.stringify(k) + ':' + literal); };
    var comp = $('composition').value.trim();
    if (comp) { add('composition', JSON.stringify(comp)); add('exact_counts', $('exact_counts').checked ? 'true' : 'false'); }
    add('num_samples', numberLiteral($('num_samples'), 'num_samples'));
    add('sampler', JSON.stringify($('sampler').value));
    add('steps', numberLiteral($('steps'), 'steps'));
    if (!$('eta').disabled) add('eta', numberLiteral($('eta'), 'eta'));
    add('noise_scale', numberLiteral($('noise_scale'), 'noise_scale'));
    add('seed', numberLiteral($('seed'), 'seed'));
    add('guidance', numberLiteral($('guidance'), 'guidance'));
    var props = [];
    document.querySelectorAll('[data-property]').forEach(function (input) {
      var v = numberLiteral(input, 'properties.' + input.getAttribute('data-property'));
      if (v !== undefined) props.push(JSON.stringify(input.getAttribute('data-property')) + ':' + v);
    });
    if (props.length) add('properties', '{' + props.join(',') + '}');
    add('format', '"json"');
    return '{' + parts.join(',') + '}';
  }

  function generate(ev) {
    if (ev) ev.preventDefault();
    clearErrors();
    var body;
    try { body = buildBody(); } catch (e) { showError(e.field, e.message); return; }
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    text(status, 'generating\u2026');
    var t0 = performance.now();
    fetch(base + 'v1/generate', {method: 'POST', headers: {'Content-Type': 'application/json', Accept: 'application/json'}, body: body})
      .then(function (r) {
        return r.text().then(function (t) {
          var js = null;
          try { js = JSON.parse(t); } catch (e) { /* not JSON: a proxy's page */ }
          // a random seed has up to 63 bits: keep its digits (a JS number would round it)
          var seed = /^\{[^{]*?"seed":\s*(\d+)/.exec(t);
          if (js && seed) js.seed = seed[1];
          return {status: r.status, ok: r.ok, body: js, text: t};
        });
      })
      .then(function (res) {
        if (res.ok && res.body) {
          text(status, '');
          addRun(res.body, (performance.now() - t0) / 1000);
          return;
        }
        var err = res.body && res.body.error;
        text(status, 'the service answered ' + res.status);
        if (err) showError(err.field, err.message);
        else showError(null, 'HTTP ' + res.status + ': ' + String(res.text || '').slice(0, 300));
      })
      .catch(function (err) { text(status, ''); showError(null, 'request failed: ' + err.message); })
      .then(function () { button.disabled = false; form.removeAttribute('aria-busy'); });
  }

  // ------------------------------------------------------------------ results: gallery cards per run
  function crystalOf(entry, res) {
    var c = {};
    if (entry.facts && typeof entry.facts === 'object') Object.assign(c, entry.facts);
    Object.keys(entry).forEach(function (k) { if (k !== 'facts' && k !== 'cif') c[k] = entry[k]; });
    c.id = res.id.slice(0, 8) + '/' + entry.index;
    return c;
  }

  function download(label, filename, mime, make) {
    var a = document.createElement('a');
    a.className = 'um-btn pg-dl';
    a.textContent = label;
    a.download = filename;
    a.href = '#';
    a.setAttribute('data-format', label.toLowerCase());
    // built on first use (a card's CIF is only made when someone asks for it)
    a.addEventListener('click', function () { if (a.getAttribute('href') === '#') a.href = 'data:' + mime + ';charset=utf-8,' + encodeURIComponent(make()); });
    return a;
  }

  function fileStem(c) { return (c.formula || 'crystal') + '_' + c.id.replace('/', '_'); }

  function addRun(res, seconds) {
    runCount += 1;
    var v = res.validity || {};
    var section = document.createElement('section');
    section.className = 'pg-run';
    section.setAttribute('data-run', res.id);
    var comp = $('composition').value.trim();
    var head = document.createElement('div');
    head.className = 'pg-run-head';
    head.innerHTML = '<b>Run ' + runCount + '</b> \u00b7 ' + (comp ? window.UnimatCards.formulaHTML(comp) : 'any composition') +
      ' \u00b7 <span class="pg-valid-count">' + esc(v.valid) + ' of ' + esc(v.count) + ' valid</span>' +
      (v.matches_request !== undefined && comp ? ' \u00b7 ' + esc(v.matches_request) + ' match the request' : '') +
      ' \u00b7 ' + esc(String(res.sampler).toUpperCase()) + ' ' + esc(res.steps) + ' steps' +
      (res.sampler === 'ddim' && res.eta ? ', eta ' + esc(res.eta) : '') + ' \u00b7 seed <code class="pg-seed" title="click: use this seed">' + esc(res.seed) + '</code>' +
      ' \u00b7 ' + seconds.toFixed(1) + ' s <span class="pg-muted">(request ' + esc(res.id.slice(0, 8)) + ')</span>';
    head.querySelector('.pg-seed').addEventListener('click', function () { $('seed').value = res.seed; });
    var grid = document.createElement('div');
    grid.className = 'um-grid pg-grid';
    section.appendChild(head);
    section.appendChild(grid);
    runs.insertBefore(section, runs.firstChild);
    var crystals = res.structures.map(function (e) { return crystalOf(e, res); });
    var byIndex = {};
    res.structures.forEach(function (e) { byIndex[e.index] = e; });
    window.UnimatCards.renderCards(grid, crystals, {
      extra: function (c) {
        if (!c.structure) return null;
        var V = window.UnimatViewer, box = document.createElement('div');
        box.className = 'um-downloads pg-downloads';
        box.appendChild(download('CIF', fileStem(c) + '.cif', 'chemical/x-cif', function () { return V.toCIF(c); }));
        box.appendChild(download('POSCAR', fileStem(c) + '.vasp', 'text/plain', function () { return V.toPOSCAR(c); }));
        return box;
      },
      onOpen: function (c) {
        if (!c.structure) return;
        var entry = byIndex[c.id.split('/')[1]] || {};
        var extra = entry.cif ? [{label: 'CIF (service)', filename: fileStem(c) + '_service.cif',
                                  href: 'data:chemical/x-cif;charset=utf-8,' + encodeURIComponent(entry.cif)}] : [];
        window.UnimatViewer.openViewer(c, {title: (c.formula || 'crystal') + ' \u2014 run ' + runCount + ', crystal ' +
                                          c.index + ', seed ' + res.seed, downloads: extra});
      }
    });
  }

  form.addEventListener('submit', generate);
  $('sampler').addEventListener('change', stepsPlaceholder);
  FIELDS.forEach(function (f) {  // editing a field clears its message
    var input = $(f);
    if (input) input.addEventListener('input', function () {
      var slot = $(f + '-error'); if (slot) text(slot, '');
      var box = input.closest('.pg-field'); if (box) box.classList.remove('pg-invalid');
      input.removeAttribute('aria-invalid');
    });
  });
  window.UnimatPage = {ready: loadModel(), generate: generate, showError: showError};
})();
