// The retrieval page: talks to the JSON API only. File names and every other value from the
// server are untrusted text: they go into the page through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

// --- token: taken once from /?token=..., kept for this tab, removed from the address bar ---
(function keepToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("retrieval-token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
})();

function headers() {
  const t = sessionStorage.getItem("retrieval-token");
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

const blobs = new Map(); // url -> object URL (images need the token header, so they are fetched)
async function imageURL(path) {
  if (!blobs.has(path)) {
    const r = await api(path);
    blobs.set(path, URL.createObjectURL(await r.blob()));
  }
  return blobs.get(path);
}

function status(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// A file name's bytes that are not UTF-8 arrive as lone surrogates U+DC80..U+DCFF (the JSON
// carries them as "\udcff", as `retrieve query --json` does); they are shown as \xNN, as the
// CLI shows them. Everything else, surrogate pairs included, is unchanged.
function shown(text) {
  let out = "";
  for (const ch of String(text)) {
    const c = ch.charCodeAt(0);
    out += ch.length === 1 && c >= 0xdc80 && c <= 0xdcff ? "\\x" + (c - 0xdc00).toString(16).padStart(2, "0") : ch;
  }
  return out;
}

function baseName(path) {
  const parts = String(path).split(/[\\/]/);
  return parts[parts.length - 1] || String(path);
}

// --- views ---
function show(view) {
  for (const v of ["search", "detail", "index"]) $(v + "-view").hidden = v !== view;
  $("tab-search").classList.toggle("active", view !== "index");
  $("tab-index").classList.toggle("active", view === "index");
}
$("tab-search").addEventListener("click", () => show(state.detail ? "detail" : "search"));
$("tab-index").addEventListener("click", () => { show("index"); loadIndex(); });
$("back").addEventListener("click", () => { state.detail = null; show("search"); });

const state = { file: null, queryURL: null, box: null, natural: null, result: null, detail: null };

// --- choosing a query: file input, drop, paste ---
function choose(file) {
  if (!file) return;
  state.file = file;
  state.box = null;
  if (state.queryURL) URL.revokeObjectURL(state.queryURL);
  state.queryURL = URL.createObjectURL(file);
  const img = $("query-img");
  img.onload = () => {
    state.natural = [img.naturalWidth, img.naturalHeight];
    $("box-hint").hidden = false;
  };
  img.onerror = () => { $("box-hint").hidden = true; state.natural = null; }; // a format the browser cannot show
  img.src = state.queryURL;
  $("query-box").hidden = false;
  $("drop-hint").textContent = file.name || "pasted image";
  $("go").disabled = false;
  drawBox();
  search();
}
$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) {
    if (item.kind === "file" && item.type.startsWith("image/")) { choose(item.getAsFile()); break; }
  }
});

// --- drawing a box on the query (kept in the image's own pixels) ---
function toImage(e) {
  const img = $("query-img");
  const r = img.getBoundingClientRect();
  const sx = state.natural[0] / r.width, sy = state.natural[1] / r.height;
  const x = Math.min(Math.max(e.clientX - r.left, 0), r.width), y = Math.min(Math.max(e.clientY - r.top, 0), r.height);
  return [x * sx, y * sy];
}
let dragFrom = null;
$("query-box").addEventListener("mousedown", (e) => {
  if (!state.natural) return;
  e.preventDefault();
  dragFrom = toImage(e);
});
window.addEventListener("mousemove", (e) => {
  if (!dragFrom) return;
  const to = toImage(e);
  state.box = [Math.min(dragFrom[0], to[0]), Math.min(dragFrom[1], to[1]), Math.max(dragFrom[0], to[0]), Math.max(dragFrom[1], to[1])];
  drawBox();
});
window.addEventListener("mouseup", () => {
  if (!dragFrom) return;
  dragFrom = null;
  const b = state.box;
  if (b && (b[2] - b[0] < 8 || b[3] - b[1] < 8)) state.box = null; // a click, not a box
  drawBox();
  search();
});
$("clear-box").addEventListener("click", () => { state.box = null; drawBox(); search(); });

function drawBox() {
  const box = $("box");
  $("clear-box").disabled = !state.box;
  if (!state.box || !state.natural) {
    box.hidden = true;
    $("box-text").textContent = "";
    return;
  }
  const [x1, y1, x2, y2] = state.box;
  const fx = 100 / state.natural[0], fy = 100 / state.natural[1];
  Object.assign(box.style, { left: x1 * fx + "%", top: y1 * fy + "%", width: (x2 - x1) * fx + "%", height: (y2 - y1) * fy + "%" });
  box.hidden = false;
  $("box-text").textContent = "region " + state.box.map((v) => Math.round(v)).join(", ");
}

// --- searching ---
$("options").addEventListener("submit", (e) => { e.preventDefault(); search(); });
$("rerank").addEventListener("change", () => search());
let searchSeq = 0;
async function search() {
  if (!state.file) return;
  const seq = ++searchSeq;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "pasted.png");
  form.append("k", $("k").value || "20");
  form.append("rerank", $("rerank").checked ? "true" : "false");
  if (state.box) form.append("bbox", state.box.map((v) => v.toFixed(1)).join(","));
  status("searching...");
  try {
    const r = await api("/api/search", { method: "POST", body: form });
    const data = await r.json();
    if (seq !== searchSeq) return; // a newer search was started meanwhile
    state.result = data;
    status("");
    renderResults(data);
  } catch (err) {
    if (seq === searchSeq) status(err.message, true);
  }
}

function renderResults(data) {
  const list = $("results");
  list.replaceChildren();
  const n = data.hits.length;
  $("summary").textContent = n + " result" + (n === 1 ? "" : "s") +
    (data.reranked ? ", re-ranked by verified patch matches (inliers), then similarity" : ", by similarity");
  for (const hit of data.hits) {
    const img = el("img", { class: "thumb", alt: shown(baseName(hit.path)) });
    const meta = el("div", { class: "meta" },
      el("span", { class: "score", text: "#" + hit.rank + "  " + hit.score.toFixed(3) }));
    if (hit.inliers !== undefined) meta.append(el("span", { class: "inl", text: hit.inliers + " inliers" }));
    meta.append(el("span", { class: "name", title: shown(hit.path), text: shown(baseName(hit.path)) }));
    const li = el("li", { tabindex: "0" }, img, meta);
    li.addEventListener("click", () => openDetail(hit));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(hit); });
    list.append(li);
    imageURL("/api/images/" + hit.id + "?max=320").then((u) => { img.src = u; }).catch(() => { img.alt = "(unavailable)"; });
  }
}

// --- one result: the two images side by side with the verified correspondences ---
async function openDetail(hit) {
  state.detail = { hit, pairs: null, kind: "lines" };
  show("detail");
  $("detail-title").textContent = "#" + hit.rank + "  " + shown(hit.path);
  $("detail-stats").textContent = "matching...";
  selectKind("lines");
  const canvas = $("pair");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  try {
    const qid = state.result.query;
    const [m, other] = await Promise.all([
      api("/api/queries/" + encodeURIComponent(qid) + "/matches/" + hit.id).then((r) => r.json()),
      imageURL("/api/images/" + hit.id + "?max=1024").then(loadImg),
    ]);
    const query = await loadImg(state.queryURL).catch(() => null);
    if (state.detail === null || state.detail.hit !== hit) return;
    Object.assign(state.detail, { m, query, other });
    $("detail-stats").textContent = m.matches + " patch matches, " + m.inliers + " verified (drawn)" +
      "; score " + hit.score.toFixed(4);
    drawPair(-1);
  } catch (err) {
    $("detail-stats").textContent = err.message;
    status(err.message, true);
  }
}

function loadImg(url) {
  return new Promise((resolve, reject) => {
    const i = new Image();
    i.onload = () => resolve(i);
    i.onerror = () => reject(new Error("image could not be shown"));
    i.src = url;
  });
}

function layout(d) {
  const h = 440; // both pictures at one height that suits a laptop screen
  const qw = d.query ? d.query.naturalWidth : d.m.query_size[0], qh = d.query ? d.query.naturalHeight : d.m.query_size[1];
  const sq = h / qh, so = h / d.other.naturalHeight;
  const gap = 12;
  return { h, gap, sq, so, ox: qw * sq + gap, width: Math.round(qw * sq + gap + d.other.naturalWidth * so),
           // pairs are in the images' original pixels; displayed pictures may be downscaled (max=1024)
           fq: sq * (qw / d.m.query_size[0]), fo: so * (d.other.naturalWidth / d.m.size[0]) };
}

function drawPair(highlight) {
  const d = state.detail;
  if (!d || !d.m) return;
  const L = layout(d);
  const canvas = $("pair");
  canvas.width = L.width;
  canvas.height = L.h;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  if (d.query) g.drawImage(d.query, 0, 0, L.ox - L.gap, L.h);
  g.drawImage(d.other, L.ox, 0, L.width - L.ox, L.h);
  d.pairs = d.m.pairs.map(([qx, qy, x, y], i) => ({ a: [qx * L.fq, qy * L.fq], b: [L.ox + x * L.fo, y * L.fo], s: d.m.similarity[i] }));
  d.pairs.forEach((p, i) => {
    const on = highlight === i, dim = highlight >= 0 && !on;
    g.strokeStyle = on ? "#ffea00" : colour(p.s, dim ? 0.25 : 0.85);
    g.lineWidth = on ? 4 : 2;
    g.beginPath(); g.moveTo(p.a[0], p.a[1]); g.lineTo(p.b[0], p.b[1]); g.stroke();
    for (const [x, y] of [p.a, p.b]) {
      g.fillStyle = on ? "#ffea00" : colour(p.s, dim ? 0.3 : 1);
      g.beginPath(); g.arc(x, y, on ? 7 : 3, 0, 2 * Math.PI); g.fill();
    }
  });
  if (highlight >= 0) { // the matched patch in the result, outlined
    const p = d.pairs[highlight], r = 12;
    g.strokeStyle = "#ffea00"; g.lineWidth = 3;
    g.strokeRect(p.b[0] - r, p.b[1] - r, 2 * r, 2 * r);
  }
}

function colour(s, alpha) { // blue (0.5) .. red (1), as `retrieve match` draws
  const t = Math.min(Math.max((s - 0.5) / 0.5, 0), 1);
  return "rgba(" + Math.round(255 * t) + ",60," + Math.round(255 * (1 - t)) + "," + alpha + ")";
}

$("pair").addEventListener("mousemove", (e) => {
  const d = state.detail;
  if (!d || !d.pairs) return;
  const r = e.target.getBoundingClientRect();
  const x = (e.clientX - r.left) * (e.target.width / r.width), y = (e.clientY - r.top) * (e.target.height / r.height);
  let best = -1, bestD = 20 * 20;
  d.pairs.forEach((p, i) => {
    const dd = (p.a[0] - x) ** 2 + (p.a[1] - y) ** 2;
    if (dd < bestD) { best = i; bestD = dd; }
  });
  if (best !== d.hover) { d.hover = best; drawPair(best); }
});
$("pair").addEventListener("mouseleave", () => { if (state.detail) { state.detail.hover = -1; drawPair(-1); } });

function selectKind(kind) {
  for (const b of document.querySelectorAll(".kind")) b.classList.toggle("active", b.dataset.kind === kind);
  $("pair-wrap").hidden = kind !== "lines";
  $("picture").hidden = kind === "lines";
}
for (const b of document.querySelectorAll(".kind")) {
  b.addEventListener("click", async () => {
    const d = state.detail;
    if (!d) return;
    const kind = b.dataset.kind;
    selectKind(kind);
    if (kind === "lines") return;
    const pic = $("picture");
    pic.removeAttribute("src");
    pic.alt = "drawing " + kind + "...";
    try {
      pic.src = await imageURL("/api/queries/" + encodeURIComponent(state.result.query) + "/matches/" + d.hit.id +
                               "?format=png&kind=" + kind);
      pic.alt = kind;
    } catch (err) {
      pic.alt = err.message;
      status(err.message, true);
    }
  });
}

// --- the index page ---
async function loadIndex() {
  try {
    const info = await (await api("/api/info")).json();
    const cfg = info.config || {};
    const bb = cfg.backbone || {}, im = cfg.image || {}, pool = cfg.pooling || {};
    const facts = [
      ["index", shown(info.index)],
      ["images", info.images + " indexed, " + info.skipped.length + " skipped"],
      ["model", (bb.name || "?") + " (" + (bb.dtype || "?") + "), size " + im.size],
      ["pooling", pool.pooling + ", scales " + JSON.stringify(pool.scales)],
      ["whitening", info.whitening ? "PCA " + info.whitening.dim_in + " -> " + info.whitening.dim_out +
        ", fitted on " + info.whitening.fitted_on : "none (L2 only)"],
      ["vectors", info.vector_index.fresh ? info.vector_index.kind + ", " + info.vector_index.vectors + " x " +
        info.vector_index.dim : "stale (rebuilt on next search)"],
      ["on disk", (info.bytes_on_disk / 1e6).toFixed(1) + " MB"],
    ];
    const dl = $("index-facts");
    dl.replaceChildren();
    for (const [k, v] of facts) dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
    $("index-config").textContent = JSON.stringify(cfg, null, 2);
    const body = $("skipped").querySelector("tbody");
    body.replaceChildren();
    for (const s of info.skipped) body.append(el("tr", {}, el("td", { text: shown(s.path) }), el("td", { text: shown(s.reason) })));
    $("skipped-none").hidden = info.skipped.length > 0;
    $("skipped").hidden = info.skipped.length === 0;
    status("");
  } catch (err) {
    status(err.message, true);
  }
}

api("/api/health").then((r) => r.json()).then((h) => status(h.images + " images indexed"))
  .catch((err) => status(err.message, true));
