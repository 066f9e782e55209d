/* unimat-dist crystal viewer: a dependency-free Canvas 2D ball-and-stick viewer for periodic crystals.
 * Part of unimat-dist (same licence as the package). Works offline, in file:// pages and in headless browsers
 * (no WebGL needed).
 *
 * API (global `UnimatViewer`):
 *   UnimatViewer.createViewer(canvas, crystal, opts) -> viewer
 *       crystal: {structure: {lattice: {matrix: [[ax,ay,az],[bx,by,bz],[cx,cy,cz]]}, species: [...],
 *                 frac_coords: [[...]...] and/or cart_coords: [[...]...]}, ...facts}
 *                (a bare structure object is accepted too; see unimat_dist/generation/records.py structure_to_json)
 *       opts: {supercell: 1..3 (or [na,nb,nc]), showCell: true, showBonds: true, interactive: true,
 *              background: '#ffffff'}
 *       viewer: {render(), setSupercell(n), setShowCell(bool), setShowBonds(bool), resetView(), destroy()}
 *       Drag rotates, shift-drag (or right-drag) pans, the wheel zooms, double-click resets.
 *   UnimatViewer.renderStatic(canvas, crystal, opts)   one non-interactive drawing (card thumbnails)
 *   UnimatViewer.openViewer(crystal, opts) -> {close()}   modal dialog: 3D view, supercell 1-3, unit-cell box,
 *       bonds, facts table, CIF/POSCAR downloads. opts: {reference: crystal (shown side by side),
 *       downloads: [{label, href, filename}] (extra links, e.g. the run's files), title: string}
 *   UnimatViewer.closeViewer()
 *   UnimatViewer.toCIF(crystal), UnimatViewer.toPOSCAR(crystal)   P1 CIF / VASP5 POSCAR text
 *   UnimatViewer.elementColor(symbol) -> '#rrggbb' (Jmol colours), UnimatViewer.COLORS, UnimatViewer.RADII
 *   UnimatViewer.getStructure(crystal) -> {matrix, species, frac, cart}
 */
(function (global) {
  'use strict';

  // Jmol / CPK element colours (http://jmol.sourceforge.net/jscolors/)
  var COLORS = {
    H: '#FFFFFF', He: '#D9FFFF', Li: '#CC80FF', Be: '#C2FF00', B: '#FFB5B5', C: '#909090', N: '#3050F8',
    O: '#FF0D0D', F: '#90E050', Ne: '#B3E3F5', Na: '#AB5CF2', Mg: '#8AFF00', Al: '#BFA6A6', Si: '#F0C8A0',
    P: '#FF8000', S: '#FFFF30', Cl: '#1FF01F', Ar: '#80D1E3', K: '#8F40D4', Ca: '#3DFF00', Sc: '#E6E6E6',
    Ti: '#BFC2C7', V: '#A6A6AB', Cr: '#8A99C7', Mn: '#9C7AC7', Fe: '#E06633', Co: '#F090A0', Ni: '#50D050',
    Cu: '#C88033', Zn: '#7D80B0', Ga: '#C28F8F', Ge: '#668F8F', As: '#BD80E3', Se: '#FFA100', Br: '#A62929',
    Kr: '#5CB8D1', Rb: '#702EB0', Sr: '#00FF00', Y: '#94FFFF', Zr: '#94E0E0', Nb: '#73C2C9', Mo: '#54B5B5',
    Tc: '#3B9E9E', Ru: '#248F8F', Rh: '#0A7D8C', Pd: '#006985', Ag: '#C0C0C0', Cd: '#FFD98F', In: '#A67573',
    Sn: '#668080', Sb: '#9E63B5', Te: '#D47A00', I: '#940094', Xe: '#429EB0', Cs: '#57178F', Ba: '#00C900',
    La: '#70D4FF', Ce: '#FFFFC7', Pr: '#D9FFC7', Nd: '#C7FFC7', Pm: '#A3FFC7', Sm: '#8FFFC7', Eu: '#61FFC7',
    Gd: '#45FFC7', Tb: '#30FFC7', Dy: '#1FFFC7', Ho: '#00FF9C', Er: '#00E675', Tm: '#00D452', Yb: '#00BF38',
    Lu: '#00AB24', Hf: '#4DC2FF', Ta: '#4DA6FF', W: '#2194D6', Re: '#267DAB', Os: '#266696', Ir: '#175487',
    Pt: '#D0D0E0', Au: '#FFD123', Hg: '#B8B8D0', Tl: '#A6544D', Pb: '#575961', Bi: '#9E4FB5', Po: '#AB5C00',
    At: '#754F45', Rn: '#428296', Fr: '#420066', Ra: '#007D00', Ac: '#70ABFA', Th: '#00BAFF', Pa: '#00A1FF',
    U: '#008FFF', Np: '#0080FF', Pu: '#006BFF', Am: '#545CF2', Cm: '#785CE3', Bk: '#8A4FE3', Cf: '#A136D4',
    Es: '#B31FD4', Fm: '#B31FBA'
  };
  // covalent radii in Angstrom (Cordero et al. 2008), for atom sizes and bonds
  var RADII = {
    H: .31, He: .28, Li: 1.28, Be: .96, B: .84, C: .76, N: .71, O: .66, F: .57, Ne: .58, Na: 1.66, Mg: 1.41,
    Al: 1.21, Si: 1.11, P: 1.07, S: 1.05, Cl: 1.02, Ar: 1.06, K: 2.03, Ca: 1.76, Sc: 1.70, Ti: 1.60, V: 1.53,
    Cr: 1.39, Mn: 1.39, Fe: 1.32, Co: 1.26, Ni: 1.24, Cu: 1.32, Zn: 1.22, Ga: 1.22, Ge: 1.20, As: 1.19,
    Se: 1.20, Br: 1.20, Kr: 1.16, Rb: 2.20, Sr: 1.95, Y: 1.90, Zr: 1.75, Nb: 1.64, Mo: 1.54, Tc: 1.47,
    Ru: 1.46, Rh: 1.42, Pd: 1.39, Ag: 1.45, Cd: 1.44, In: 1.42, Sn: 1.39, Sb: 1.39, Te: 1.38, I: 1.39,
    Xe: 1.40, Cs: 2.44, Ba: 2.15, La: 2.07, Ce: 2.04, Pr: 2.03, Nd: 2.01, Pm: 1.99, Sm: 1.98, Eu: 1.98,
    Gd: 1.96, Tb: 1.94, Dy: 1.92, Ho: 1.92, Er: 1.89, Tm: 1.90, Yb: 1.87, Lu: 1.87, Hf: 1.75, Ta: 1.70,
    W: 1.62, Re: 1.51, Os: 1.44, Ir: 1.41, Pt: 1.36, Au: 1.36, Hg: 1.32, Tl: 1.45, Pb: 1.46, Bi: 1.48,
    Po: 1.40, At: 1.50, Rn: 1.50, Fr: 2.60, Ra: 2.21, Ac: 2.15, Th: 2.06, Pa: 2.00, U: 1.96, Np: 1.90,
    Pu: 1.87, Am: 1.80, Cm: 1.69
  };

  function elementColor(el) { return COLORS[el] || '#FF1493'; }
  function elementRadius(el) { return RADII[el] || 1.5; }

  // ---------- small linear algebra ----------
  function matMul(A, B) {
    var C = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
    for (var i = 0; i < 3; i++) for (var j = 0; j < 3; j++)
      C[i][j] = A[i][0] * B[0][j] + A[i][1] * B[1][j] + A[i][2] * B[2][j];
    return C;
  }
  function rotX(t) { var c = Math.cos(t), s = Math.sin(t); return [[1, 0, 0], [0, c, -s], [0, s, c]]; }
  function rotY(t) { var c = Math.cos(t), s = Math.sin(t); return [[c, 0, s], [0, 1, 0], [-s, 0, c]]; }
  function apply(R, v) {
    return [R[0][0] * v[0] + R[0][1] * v[1] + R[0][2] * v[2], R[1][0] * v[0] + R[1][1] * v[1] + R[1][2] * v[2],
            R[2][0] * v[0] + R[2][1] * v[1] + R[2][2] * v[2]];
  }
  function fracToCart(M, f) {  // rows of M are the lattice vectors
    return [f[0] * M[0][0] + f[1] * M[1][0] + f[2] * M[2][0], f[0] * M[0][1] + f[1] * M[1][1] + f[2] * M[2][1],
            f[0] * M[0][2] + f[1] * M[1][2] + f[2] * M[2][2]];
  }
  function inv3(M) {
    var a = M[0][0], b = M[0][1], c = M[0][2], d = M[1][0], e = M[1][1], f = M[1][2], g = M[2][0], h = M[2][1], i = M[2][2];
    var A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
    var det = a * A + b * B + c * C;
    return [[A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
            [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
            [C / det, -(a * h - b * g) / det, (a * e - b * d) / det]];
  }
  function norm(v) { return Math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]); }
  function angle(u, v) {
    var c = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / (norm(u) * norm(v));
    return Math.acos(Math.max(-1, Math.min(1, c))) * 180 / Math.PI;
  }

  /** {matrix, species, frac, cart} of a crystal (or of a bare structure object). */
  function getStructure(crystal) {
    var s = crystal && crystal.structure ? crystal.structure : crystal;
    if (!s || !s.lattice || !s.species) throw new Error('crystal has no structure');
    var M = s.lattice.matrix || s.lattice;
    var frac = s.frac_coords, cart = s.cart_coords;
    if (!frac && cart) {
      var Mi = inv3(M);  // cart = frac . M  ->  frac = cart . M^-1
      frac = cart.map(function (c) { return fracToCart(Mi, c); });
    }
    if (!cart) cart = frac.map(function (f) { return fracToCart(M, f); });
    return {matrix: M, species: s.species, frac: frac, cart: cart};
  }

  function hexToRgb(hex) {
    var n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  function shade(rgb, f) {  // f > 0 lighter, f < 0 darker
    return 'rgb(' + rgb.map(function (x) {
      return Math.round(f >= 0 ? x + (255 - x) * f : x * (1 + f));
    }).join(',') + ')';
  }

  // ---------- scene ----------
  function buildScene(st, sc, showBonds) {
    var M = st.matrix, eps = 0.02, atoms = [];
    for (var i = 0; i < st.species.length; i++) {
      var f0 = st.frac[i].map(function (x) { x = x - Math.floor(x); return x > 1 - 1e-6 ? 0 : x; });
      for (var a = 0; a < sc[0]; a++) for (var b = 0; b < sc[1]; b++) for (var c = 0; c < sc[2]; c++) {
        var f = [f0[0] + a, f0[1] + b, f0[2] + c];
        atoms.push({el: st.species[i], f: f});
      }
    }
    // images on the far faces of the (super)cell so that boundary atoms appear complete
    var extra = [];
    atoms.forEach(function (at) {
      var opts = [0, 1, 2].map(function (k) { return at.f[k] < eps ? [0, sc[k]] : [0]; });
      opts[0].forEach(function (dx) { opts[1].forEach(function (dy) { opts[2].forEach(function (dz) {
        if (dx || dy || dz) extra.push({el: at.el, f: [at.f[0] + dx, at.f[1] + dy, at.f[2] + dz], image: true});
      }); }); });
    });
    atoms = atoms.concat(extra);
    atoms.forEach(function (at) { at.p = fracToCart(M, at.f); });
    var bonds = [];
    if (showBonds && atoms.length <= 4000) {
      var maxR = 0;
      atoms.forEach(function (at) { at.r = elementRadius(at.el); if (at.r > maxR) maxR = at.r; });
      var cut = 2.3 * maxR * 1.15;
      var cell = {}, key = function (p) { return Math.floor(p[0] / cut) + ',' + Math.floor(p[1] / cut) + ',' + Math.floor(p[2] / cut); };
      atoms.forEach(function (at, idx) { var k = key(at.p); (cell[k] = cell[k] || []).push(idx); });
      atoms.forEach(function (at, i) {
        var gx = Math.floor(at.p[0] / cut), gy = Math.floor(at.p[1] / cut), gz = Math.floor(at.p[2] / cut);
        for (var dx = -1; dx <= 1; dx++) for (var dy = -1; dy <= 1; dy++) for (var dz = -1; dz <= 1; dz++) {
          var list = cell[(gx + dx) + ',' + (gy + dy) + ',' + (gz + dz)];
          if (!list) continue;
          for (var n = 0; n < list.length; n++) {
            var j = list[n];
            if (j <= i) continue;
            var bt = atoms[j];
            var d = norm([at.p[0] - bt.p[0], at.p[1] - bt.p[1], at.p[2] - bt.p[2]]);
            if (d > 0.4 && d < 1.15 * (at.r + bt.r)) bonds.push([i, j]);
          }
        }
      });
    }
    var corners = [];
    for (var x = 0; x <= 1; x++) for (var y = 0; y <= 1; y++) for (var z = 0; z <= 1; z++) corners.push([x, y, z]);
    var edges = [];
    for (var p = 0; p < 8; p++) for (var q = p + 1; q < 8; q++) {
      var dd = Math.abs(corners[p][0] - corners[q][0]) + Math.abs(corners[p][1] - corners[q][1]) + Math.abs(corners[p][2] - corners[q][2]);
      if (dd === 1) edges.push([p, q]);
    }
    var unitCorners = corners.map(function (f) { return fracToCart(M, f); });
    var superCorners = corners.map(function (f) { return fracToCart(M, [f[0] * sc[0], f[1] * sc[1], f[2] * sc[2]]); });
    var center = [0, 0, 0];
    superCorners.forEach(function (p) { center[0] += p[0] / 8; center[1] += p[1] / 8; center[2] += p[2] / 8; });
    var radius = 0;
    superCorners.concat(atoms.map(function (a) { return a.p; })).forEach(function (p) {
      radius = Math.max(radius, norm([p[0] - center[0], p[1] - center[1], p[2] - center[2]]));
    });
    return {atoms: atoms, bonds: bonds, edges: edges, unitCorners: unitCorners, superCorners: superCorners,
            center: center, radius: radius + 1.0};
  }

  var DEFAULT_ROT = function () { return matMul(rotX(0.35), matMul(rotY(-0.5), rotX(-Math.PI / 2))); };

  function supercellOf(n) {
    if (Array.isArray(n)) return n.map(function (x) { return Math.max(1, Math.min(3, x | 0)); });
    n = Math.max(1, Math.min(3, (n | 0) || 1));
    return [n, n, n];
  }

  function draw(canvas, scene, state) {
    var ctx = canvas.getContext('2d');
    var dpr = state.dpr || 1;
    var W = canvas.width, H = canvas.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = state.background || '#ffffff';
    ctx.fillRect(0, 0, W, H);
    var s = state.zoom * Math.min(W, H) / (2 * scene.radius);
    var D = 5 * scene.radius;
    var R = state.rot, c0 = scene.center;
    function proj(p) {
      var v = apply(R, [p[0] - c0[0], p[1] - c0[1], p[2] - c0[2]]);
      var k = D / (D - v[2]);
      return [W / 2 + state.panX * dpr + s * k * v[0], H / 2 + state.panY * dpr - s * k * v[1], v[2], k];
    }
    var items = [];
    var P = scene.atoms.map(function (a) { return proj(a.p); });
    var ok = P.map(function (p) { return isFinite(p[0]) && isFinite(p[1]) && isFinite(p[2]); });
    scene.atoms.forEach(function (a, i) {
      if (ok[i]) items.push({z: P[i][2], t: 0, i: i});  // a non-finite coordinate is not drawn
    });
    scene.bonds.forEach(function (b) {
      if (ok[b[0]] && ok[b[1]]) items.push({z: (P[b[0]][2] + P[b[1]][2]) / 2 - 0.3, t: 1, b: b});
    });
    if (!isFinite(s) || s <= 0) return;  // degenerate cell: nothing sensible to draw
    if (state.showCell) {
      var uc = scene.unitCorners.map(proj);
      scene.edges.forEach(function (e) { items.push({z: (uc[e[0]][2] + uc[e[1]][2]) / 2, t: 2, a: uc[e[0]], b: uc[e[1]], w: 1.6}); });
      if (state.sc[0] * state.sc[1] * state.sc[2] > 1) {
        var scn = scene.superCorners.map(proj);
        scene.edges.forEach(function (e) { items.push({z: (scn[e[0]][2] + scn[e[1]][2]) / 2, t: 2, a: scn[e[0]], b: scn[e[1]], w: 0.8, dash: true}); });
      }
    }
    items.sort(function (u, v) { return u.z - v.z; });
    var lw = Math.max(1, dpr);
    items.forEach(function (it) {
      if (it.t === 0) {
        var a = scene.atoms[it.i], p = P[it.i];
        var r = Math.max(1.5 * dpr, s * p[3] * (0.22 + 0.28 * elementRadius(a.el)));
        var rgb = hexToRgb(elementColor(a.el));
        var g = ctx.createRadialGradient(p[0] - r * 0.35, p[1] - r * 0.35, r * 0.1, p[0], p[1], r);
        g.addColorStop(0, shade(rgb, 0.65));
        g.addColorStop(0.7, shade(rgb, 0));
        g.addColorStop(1, shade(rgb, -0.35));
        ctx.beginPath();
        ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
        ctx.fillStyle = g;
        ctx.fill();
        ctx.lineWidth = 0.6 * lw;
        ctx.strokeStyle = 'rgba(0,0,0,0.45)';
        ctx.stroke();
      } else if (it.t === 1) {
        var i = it.b[0], j = it.b[1], pi = P[i], pj = P[j];
        var mx = (pi[0] + pj[0]) / 2, my = (pi[1] + pj[1]) / 2;
        var w = Math.max(1.2 * dpr, s * 0.16 * (pi[3] + pj[3]) / 2);
        ctx.lineCap = 'round';
        [[pi, scene.atoms[i].el], [pj, scene.atoms[j].el]].forEach(function (e) {
          ctx.beginPath();
          ctx.moveTo(e[0][0], e[0][1]);
          ctx.lineTo(mx, my);
          ctx.strokeStyle = 'rgba(60,60,60,0.8)';
          ctx.lineWidth = w + 1.2 * lw;
          ctx.stroke();
          ctx.strokeStyle = shade(hexToRgb(elementColor(e[1])), -0.1);
          ctx.lineWidth = w;
          ctx.stroke();
        });
      } else {
        ctx.beginPath();
        ctx.setLineDash(it.dash ? [4 * dpr, 3 * dpr] : []);
        ctx.moveTo(it.a[0], it.a[1]);
        ctx.lineTo(it.b[0], it.b[1]);
        ctx.strokeStyle = it.dash ? 'rgba(80,80,80,0.7)' : '#222';
        ctx.lineWidth = it.w * lw;
        ctx.stroke();
        ctx.setLineDash([]);
      }
    });
    if (state.showAxes) drawAxes(ctx, R, scene, dpr, H);
  }

  function drawAxes(ctx, R, scene, dpr, H) {
    var o = [28 * dpr, H - 28 * dpr], L = 20 * dpr;
    var uc = scene.unitCorners, cols = ['#d62728', '#2ca02c', '#1f77b4'], names = ['a', 'b', 'c'];
    var idx = [4, 2, 1];  // corners (1,0,0), (0,1,0), (0,0,1)
    ctx.font = (11 * dpr) + 'px sans-serif';
    idx.forEach(function (ci, k) {
      var v = apply(R, uc[ci]), n = norm(v) || 1;
      var e = [o[0] + L * v[0] / n, o[1] - L * v[1] / n];
      ctx.beginPath(); ctx.moveTo(o[0], o[1]); ctx.lineTo(e[0], e[1]);
      ctx.strokeStyle = cols[k]; ctx.lineWidth = 2 * dpr; ctx.stroke();
      ctx.fillStyle = cols[k]; ctx.fillText(names[k], e[0] + 2 * dpr, e[1] + 2 * dpr);
    });
  }

  function sizeCanvas(canvas) {
    var dpr = global.devicePixelRatio || 1;
    var w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    return dpr;
  }

  /** An interactive viewer on `canvas` (see the header for opts and methods). */
  function createViewer(canvas, crystal, opts) {
    opts = opts || {};
    var st = getStructure(crystal);
    var state = {rot: DEFAULT_ROT(), zoom: 1, panX: 0, panY: 0, sc: supercellOf(opts.supercell || 1),
                 showCell: opts.showCell !== false, showBonds: opts.showBonds !== false, showAxes: opts.showAxes !== false,
                 background: opts.background || '#ffffff', dpr: 1};
    var scene = buildScene(st, state.sc, state.showBonds);
    var pending = false;
    function render() {
      state.dpr = sizeCanvas(canvas);
      draw(canvas, scene, state);
    }
    function schedule() {
      if (pending) return;
      pending = true;
      (global.requestAnimationFrame || setTimeout)(function () { pending = false; render(); });
    }
    var listeners = [];
    function on(target, type, fn, o) { target.addEventListener(type, fn, o); listeners.push([target, type, fn, o]); }
    if (opts.interactive !== false) {
      var drag = null;
      canvas.style.touchAction = 'none';
      on(canvas, 'pointerdown', function (e) {
        drag = {x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 2};
        try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* synthetic events */ }
      });
      on(canvas, 'pointermove', function (e) {
        if (!drag) return;
        var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        drag.x = e.clientX; drag.y = e.clientY;
        if (drag.pan) { state.panX += dx; state.panY += dy; }
        else state.rot = matMul(matMul(rotY(dx * 0.01), rotX(dy * 0.01)), state.rot);
        schedule();
      });
      on(canvas, 'pointerup', function () { drag = null; });
      on(canvas, 'pointercancel', function () { drag = null; });
      on(canvas, 'contextmenu', function (e) { e.preventDefault(); });
      on(canvas, 'wheel', function (e) {
        e.preventDefault();
        state.zoom = Math.max(0.2, Math.min(8, state.zoom * Math.exp(-e.deltaY * 0.0015)));
        schedule();
      }, {passive: false});
      on(canvas, 'dblclick', function () { api.resetView(); });
      on(global, 'resize', schedule);
    }
    var api = {
      canvas: canvas,
      state: state,
      render: render,
      setSupercell: function (n) { state.sc = supercellOf(n); scene = buildScene(st, state.sc, state.showBonds); render(); },
      setShowCell: function (v) { state.showCell = !!v; render(); },
      setShowBonds: function (v) { state.showBonds = !!v; scene = buildScene(st, state.sc, state.showBonds); render(); },
      resetView: function () { state.rot = DEFAULT_ROT(); state.zoom = 1; state.panX = state.panY = 0; render(); },
      rotate: function (dx, dy) { state.rot = matMul(matMul(rotY(dx), rotX(dy)), state.rot); render(); },
      zoomBy: function (f) { state.zoom = Math.max(0.2, Math.min(8, state.zoom * f)); render(); },
      numAtomsDrawn: function () { return scene.atoms.length; },
      destroy: function () { listeners.forEach(function (l) { l[0].removeEventListener(l[1], l[2], l[3]); }); listeners = []; }
    };
    render();
    return api;
  }

  /** One static drawing of a crystal (thumbnails): no listeners, unit cell, bonds, no axes. */
  function renderStatic(canvas, crystal, opts) {
    opts = opts || {};
    var st = getStructure(crystal);
    var sc = supercellOf(opts.supercell || 1);
    var state = {rot: DEFAULT_ROT(), zoom: opts.zoom || 1, panX: 0, panY: 0, sc: sc, showCell: opts.showCell !== false,
                 showAxes: false, background: opts.background || '#ffffff', dpr: sizeCanvas(canvas)};
    draw(canvas, buildScene(st, sc, opts.showBonds !== false), state);
  }

  // ---------- file formats ----------
  function fmt(x, n) { return (Math.abs(x) < 5e-13 ? 0 : x).toFixed(n); }
  function latticeParams(M) {
    return {a: norm(M[0]), b: norm(M[1]), c: norm(M[2]), alpha: angle(M[1], M[2]), beta: angle(M[0], M[2]),
            gamma: angle(M[0], M[1])};
  }
  function formulaOf(crystal, st) {
    if (crystal && crystal.formula) return String(crystal.formula);
    var counts = {}, order = [];
    st.species.forEach(function (e) { if (!(e in counts)) { counts[e] = 0; order.push(e); } counts[e]++; });
    return order.map(function (e) { return e + (counts[e] > 1 ? counts[e] : ''); }).join('');
  }

  /** P1 CIF text of a crystal (fractional coordinates as stored). */
  function toCIF(crystal) {
    var st = getStructure(crystal), p = latticeParams(st.matrix);
    var vol = Math.abs(st.matrix[0][0] * (st.matrix[1][1] * st.matrix[2][2] - st.matrix[1][2] * st.matrix[2][1]) -
      st.matrix[0][1] * (st.matrix[1][0] * st.matrix[2][2] - st.matrix[1][2] * st.matrix[2][0]) +
      st.matrix[0][2] * (st.matrix[1][0] * st.matrix[2][1] - st.matrix[1][1] * st.matrix[2][0]));
    var name = formulaOf(crystal, st).replace(/[^A-Za-z0-9_]/g, '');
    var lines = ['# generated by unimat-dist (gallery viewer)', 'data_' + (name || 'crystal'),
      "_symmetry_space_group_name_H-M   'P 1'",
      '_cell_length_a   ' + fmt(p.a, 8), '_cell_length_b   ' + fmt(p.b, 8), '_cell_length_c   ' + fmt(p.c, 8),
      '_cell_angle_alpha   ' + fmt(p.alpha, 8), '_cell_angle_beta   ' + fmt(p.beta, 8),
      '_cell_angle_gamma   ' + fmt(p.gamma, 8), '_symmetry_Int_Tables_number   1',
      '_chemical_formula_sum   ' + "'" + formulaOf(null, st) + "'",
      '_cell_volume   ' + fmt(vol, 8), '_cell_formula_units_Z   1',
      'loop_', ' _symmetry_equiv_pos_site_id', ' _symmetry_equiv_pos_as_xyz', "  1  'x, y, z'",
      'loop_', ' _atom_site_type_symbol', ' _atom_site_label', ' _atom_site_symmetry_multiplicity',
      ' _atom_site_fract_x', ' _atom_site_fract_y', ' _atom_site_fract_z', ' _atom_site_occupancy'];
    var seen = {};
    st.species.forEach(function (el, i) {
      seen[el] = (seen[el] || 0) + 1;
      var f = st.frac[i];
      lines.push('  ' + el + '  ' + el + (seen[el] - 1) + '  1  ' + fmt(f[0], 8) + '  ' + fmt(f[1], 8) + '  ' + fmt(f[2], 8) + '  1');
    });
    return lines.join('\n') + '\n';
  }

  /** VASP 5 POSCAR text (species grouped in order of first appearance, direct coordinates). */
  function toPOSCAR(crystal) {
    var st = getStructure(crystal), order = [], groups = {};
    st.species.forEach(function (el, i) { if (!(el in groups)) { groups[el] = []; order.push(el); } groups[el].push(i); });
    var lines = [formulaOf(crystal, st) + ' (unimat-dist)', '1.0'];
    st.matrix.forEach(function (r) { lines.push('  ' + r.map(function (x) { return fmt(x, 10); }).join('  ')); });
    lines.push('  ' + order.join('  '));
    lines.push('  ' + order.map(function (e) { return groups[e].length; }).join('  '));
    lines.push('direct');
    order.forEach(function (el) {
      groups[el].forEach(function (i) {
        var f = st.frac[i];
        lines.push('  ' + fmt(f[0], 10) + '  ' + fmt(f[1], 10) + '  ' + fmt(f[2], 10) + ' ' + el);
      });
    });
    return lines.join('\n') + '\n';
  }

  // ---------- modal ----------
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k === 'html') e.innerHTML = attrs[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }

  var FACT_ROWS = [
    ['formula', 'Formula'], ['num_atoms', 'Atoms in cell'], ['spacegroup_symbol', 'Space group'],
    ['spacegroup_number', 'Space group number'], ['density', 'Density (g/cm\u00b3)'],
    ['volume_per_atom', 'Volume per atom (\u00c5\u00b3)'], ['min_distance', 'Shortest distance (\u00c5)'],
    ['min_distance_ratio', 'Shortest distance / covalent radii sum']
  ];
  function factValue(v) {
    if (v === null || v === undefined) return '\u2013';
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) >= 100 ? 1 : 4);
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (Array.isArray(v)) return v.join(', ');
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  function factsTable(crystal) {
    var rows = [], used = {structure: 1, thumbnail: 1, files: 1, _index: 1, elements: 1};
    FACT_ROWS.forEach(function (r) {
      if (crystal[r[0]] !== undefined) { rows.push([r[1], crystal[r[0]]]); used[r[0]] = 1; }
    });
    Object.keys(crystal).forEach(function (k) {
      if (used[k] || k.charAt(0) === '_') return;
      var v = crystal[k];
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) return;
      rows.push([k.replace(/_/g, ' '), v]);
    });
    var tb = el('table', {'class': 'um-facts'});
    rows.forEach(function (r) { tb.appendChild(el('tr', null, [el('th', {text: r[0]}), el('td', {text: factValue(r[1])})])); });
    return tb;
  }

  function blobLink(text, filename, label) {
    var url = URL.createObjectURL(new Blob([text], {type: 'chemical/x-cif'}));
    return el('a', {href: url, download: filename, 'class': 'um-btn', 'data-format': label}, [label]);
  }

  function legend(species) {
    var seen = [], box = el('div', {'class': 'um-legend'});
    species.forEach(function (s) { if (seen.indexOf(s) < 0) seen.push(s); });
    seen.forEach(function (s) {
      box.appendChild(el('span', {'class': 'um-chip'}, [el('i', {style: 'background:' + elementColor(s)}), s]));
    });
    return box;
  }

  var current = null;
  function closeViewer() {
    if (!current) return;
    current.viewers.forEach(function (v) { v.destroy(); });
    current.urls.forEach(function (u) { try { URL.revokeObjectURL(u); } catch (e) { /* ignore */ } });
    document.removeEventListener('keydown', current.onKey);
    if (current.root.parentNode) current.root.parentNode.removeChild(current.root);
    current = null;
  }

  function viewerPanel(crystal, label, viewers, urls, options) {
    var st = getStructure(crystal);
    var canvas = el('canvas', {'class': 'um-canvas'});
    var base = (crystal.id !== undefined ? String(crystal.id) : formulaOf(crystal, st)).replace(/[^A-Za-z0-9_.-]+/g, '_');
    var cif = blobLink(toCIF(crystal), base + '.cif', 'CIF');
    var pos = blobLink(toPOSCAR(crystal), base + '.vasp', 'POSCAR');
    urls.push(cif.href, pos.href);
    var links = el('div', {'class': 'um-downloads'}, [el('span', {text: 'Download: '}), cif, pos]);
    (options.downloads || []).forEach(function (d) {
      links.appendChild(el('a', {href: d.href, download: d.filename || '', 'class': 'um-btn um-btn-file'}, [d.label]));
    });
    var panel = el('div', {'class': 'um-panel'}, [
      el('div', {'class': 'um-panel-title'}, [el('strong', {text: label}), ' ', formulaOf(crystal, st),
        crystal.spacegroup_symbol ? ' \u00b7 ' + crystal.spacegroup_symbol + (crystal.spacegroup_number ? ' (' + crystal.spacegroup_number + ')' : '') : '']),
      el('div', {'class': 'um-canvas-wrap'}, [canvas]), legend(st.species), links, factsTable(crystal)]);
    return {panel: panel, canvas: canvas, crystal: crystal};
  }

  /** Open the modal 3D viewer for `crystal` (see the header). Returns {close, viewers, root}. */
  function openViewer(crystal, options) {
    options = options || {};
    closeViewer();
    var viewers = [], urls = [];
    var panels = [viewerPanel(crystal, options.label || 'Generated', viewers, urls, options)];
    if (options.reference) panels.push(viewerPanel(options.reference, options.referenceLabel || 'Reference', viewers, urls,
                                                   {downloads: options.referenceDownloads}));
    var sc = el('select', {'class': 'um-supercell', 'aria-label': 'supercell'},
                [1, 2, 3].map(function (n) { return el('option', {value: n, text: n + '\u00d7' + n + '\u00d7' + n}); }));
    var cellBox = el('input', {type: 'checkbox', 'class': 'um-showcell', checked: 'checked'});
    var bondBox = el('input', {type: 'checkbox', 'class': 'um-showbonds', checked: 'checked'});
    var controls = el('div', {'class': 'um-controls'}, [
      el('label', null, ['Supercell ', sc]), el('label', null, [cellBox, ' unit cell']), el('label', null, [bondBox, ' bonds']),
      el('button', {type: 'button', 'class': 'um-btn um-reset', onclick: function () { viewers.forEach(function (v) { v.resetView(); }); }}, ['Reset view']),
      el('span', {'class': 'um-hint', text: 'drag: rotate \u00b7 wheel: zoom \u00b7 shift-drag: pan \u00b7 double-click: reset'}),
      el('button', {type: 'button', 'class': 'um-btn um-close', 'aria-label': 'close', onclick: closeViewer}, ['\u2715 Close'])]);
    var body = el('div', {'class': 'um-modal-body' + (panels.length > 1 ? ' um-side-by-side' : '')}, panels.map(function (p) { return p.panel; }));
    var dialog = el('div', {'class': 'um-modal', role: 'dialog', 'aria-modal': 'true'}, [
      options.title ? el('div', {'class': 'um-modal-title', text: options.title}) : null, controls, body]);
    var root = el('div', {'class': 'um-overlay', id: 'um-viewer'}, [dialog]);
    root.addEventListener('click', function (e) { if (e.target === root) closeViewer(); });
    (options.container || document.body).appendChild(root);
    panels.forEach(function (p) { viewers.push(createViewer(p.canvas, p.crystal, {supercell: 1})); });
    sc.addEventListener('change', function () { viewers.forEach(function (v) { v.setSupercell(+sc.value); }); });
    cellBox.addEventListener('change', function () { viewers.forEach(function (v) { v.setShowCell(cellBox.checked); }); });
    bondBox.addEventListener('change', function () { viewers.forEach(function (v) { v.setShowBonds(bondBox.checked); }); });
    var onKey = function (e) { if (e.key === 'Escape') closeViewer(); };
    document.addEventListener('keydown', onKey);
    current = {root: root, viewers: viewers, urls: urls, onKey: onKey};
    return {close: closeViewer, viewers: viewers, root: root};
  }

  global.UnimatViewer = {
    COLORS: COLORS, RADII: RADII, elementColor: elementColor, getStructure: getStructure,
    createViewer: createViewer, renderStatic: renderStatic, openViewer: openViewer, closeViewer: closeViewer,
    toCIF: toCIF, toPOSCAR: toPOSCAR, legend: legend, factValue: factValue
  };
})(typeof window !== 'undefined' ? window : this);
