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

// The inlier count from which a pair counts as verified (retrieval.rerank.MIN_INLIERS; a test
// checks the two agree). Counts below it are shown, never in the verified colour.
const MIN_INLIERS = 6;

function headers() {
  const t = sessionStorage.getItem("retrieval-token");
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (r.status === 401) {
    askToken(sessionStorage.getItem("retrieval-token") !== null);
    throw new Error("this server needs its access token: enter it above");
  }
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

// --- a server started with --token, opened without it: ask for it ---
function askToken(wasWrong) {
  const form = $("token-form");
  if (!form.hidden) return;
  form.hidden = false;
  $("token").setAttribute("aria-invalid", wasWrong ? "true" : "false");
  $("token").focus();
}
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem("retrieval-token", t);
  $("token").value = "";
  $("token-form").hidden = true;
  health();
  if (state.file || state.like) search();
});

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
  for (const [tab, on] of [["tab-search", view !== "index"], ["tab-index", view === "index"]]) {
    $(tab).classList.toggle("active", on);
    $(tab).setAttribute("aria-selected", on ? "true" : "false");
  }
}
$("tab-search").addEventListener("click", () => show(state.detail ? "detail" : "search"));
$("tab-index").addEventListener("click", () => { show("index"); loadIndex(); });
$("back").addEventListener("click", closeDetail);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("detail-view").hidden) { e.preventDefault(); closeDetail(); }
});

// Back to the results, focus on the result that was opened (while it is still on the page).
function closeDetail() {
  const opener = state.detail && state.detail.opener;
  state.detail = null;
  show("search");
  if (opener && opener.isConnected) opener.focus();
}

// like: the indexed image a "more like this" search is about ({id, path}; null for an upload)
const state = { file: null, like: null, queryURL: null, box: null, natural: null, result: null, detail: null };

// --- choosing a query: file input, drop, paste ---
function choose(file) {
  if (!file) return;
  state.file = file;
  state.box = null;
  if (state.queryURL && !state.like) URL.revokeObjectURL(state.queryURL); // a like's picture is imageURL's
  state.like = null;
  state.queryURL = URL.createObjectURL(file);
  const img = $("query-img");
  img.onload = () => {
    state.natural = [img.naturalWidth, img.naturalHeight];
    $("box-hint").hidden = false;
    $("region").disabled = false;
  };
  img.onerror = () => { // a format the browser cannot show (or no image at all): no broken picture
    $("box-hint").hidden = true;
    $("query-box").hidden = true;
    state.natural = null;
    $("drop-hint").textContent = (file.name || "pasted image") + " (no preview in this browser)";
  };
  img.src = state.queryURL;
  $("query-box").hidden = false;
  $("drop-hint").textContent = file.name || "pasted image";
  $("go").disabled = false;
  $("region").disabled = true;
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

// The same box typed (keyboard, screen readers): x1, y1, x2, y2 in the image's pixels.
function applyTypedBox() {
  const v = ["x1", "y1", "x2", "y2"].map((id) => Number($(id).value));
  const [w, h] = state.natural || [Infinity, Infinity];
  if (["x1", "y1", "x2", "y2"].some((id) => $(id).value === "") || !(v[0] >= 0 && v[0] < v[2] && v[2] <= w &&
      v[1] >= 0 && v[1] < v[3] && v[3] <= h)) {
    uploadError("region: give 0 <= x1 < x2 <= " + w + " and 0 <= y1 < y2 <= " + h);
    return;
  }
  state.box = v;
  drawBox();
  search();
}
$("apply-box").addEventListener("click", applyTypedBox);
$("region").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && e.target.tagName === "INPUT") { e.preventDefault(); applyTypedBox(); }
});

function uploadError(text) {
  $("upload-error").textContent = text;
  $("upload-error").hidden = !text;
}

function drawBox() {
  const box = $("box");
  $("clear-box").disabled = !state.box;
  const typed = state.box ? state.box.map((v) => Math.round(v)) : ["", "", "", ""];
  ["x1", "y1", "x2", "y2"].forEach((id, i) => { $(id).value = typed[i]; });
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
function searchRequest(box) {
  const k = $("k").value || "20", rerank = $("rerank").checked ? "true" : "false";
  if (state.like) return api("/api/similar/" + state.like.id + "?" + new URLSearchParams({ k, rerank }));
  const form = new FormData();
  form.append("image", state.file, state.file.name || "pasted.png");
  form.append("k", k);
  form.append("rerank", rerank);
  if (box) form.append("bbox", box.map((v) => v.toFixed(1)).join(","));
  return api("/api/search", { method: "POST", body: form });
}

async function search() {
  if (!state.file && !state.like) return;
  const seq = ++searchSeq;
  const like = state.like;
  const box = state.box && !like ? state.box.slice() : null;
  status("searching...");
  try {
    const r = await searchRequest(box);
    const data = await r.json();
    if (seq !== searchSeq) return; // a newer search was started meanwhile
    state.result = { ...data, box };
    status("");
    uploadError("");
    renderResults(data, like);
    if (like) $("summary").focus(); // the button that asked is gone with the old results
  } catch (err) {
    if (seq !== searchSeq) return;
    // refused: the old results belong to another query; the reason goes by the upload
    state.result = null;
    $("results").replaceChildren();
    $("summary").textContent = "";
    status("");
    uploadError(err.message);
  }
}

function renderResults(data, like) {
  const list = $("results");
  list.replaceChildren();
  const n = data.hits.length;
  $("summary").textContent = n + " result" + (n === 1 ? "" : "s") +
    (like ? " more like " + shown(baseName(like.path)) : "") +
    (data.reranked ? ", re-ranked by verified patch matches (inliers), then similarity" : ", by similarity");
  for (const hit of data.hits) {
    const img = el("img", { class: "thumb", alt: shown(baseName(hit.path)) });
    const meta = el("div", { class: "meta" },
      el("span", { class: "score", text: "#" + hit.rank + "  " + hit.score.toFixed(3) }));
    if (hit.inliers !== undefined) meta.append(el("span", { class: "inl" + (hit.inliers >= MIN_INLIERS ? " verified" : ""),
      text: rerankText(hit.inliers) }));
    meta.append(el("span", { class: "name", title: shown(hit.path), text: shown(baseName(hit.path)) }));
    const card = el("button", { type: "button", class: "card" }, img, meta);
    card.addEventListener("click", () => openDetail(hit, card));
    const more = el("button", { type: "button", class: "like", text: "more like this",
                                "aria-label": "more like this: " + shown(baseName(hit.path)) });
    more.addEventListener("click", () => moreLike(hit));
    list.append(el("li", {}, card, more));
    imageURL("/api/images/" + hit.id + "?max=320").then((u) => { img.src = u; }).catch(() => { img.alt = "(unavailable)"; });
  }
}

// "More like this": the indexed image becomes the query, searched from its stored descriptor
// (GET /api/similar/{id}); no region (the server has no picture of it to crop), itself left out.
async function moreLike(hit) {
  if (state.queryURL && !state.like) URL.revokeObjectURL(state.queryURL);
  Object.assign(state, { file: null, like: { id: hit.id, path: hit.path }, box: null, natural: null, queryURL: null });
  const img = $("query-img");
  img.onload = null;
  img.onerror = null;
  img.removeAttribute("src");
  img.alt = "query: " + shown(baseName(hit.path)) + " (indexed)";
  $("query-box").hidden = false;
  $("drop-hint").textContent = "more like " + shown(baseName(hit.path)) + " (choose, drop or paste an image for a new query)";
  $("box-hint").hidden = true;
  $("region").disabled = true;
  $("go").disabled = false;
  drawBox();
  const like = state.like;
  imageURL("/api/images/" + hit.id + "?max=1024").then((u) => {
    if (state.like !== like) return;
    state.queryURL = u;
    img.src = u;
  }).catch(() => { img.alt = "(unavailable)"; });
  await search();
}

// A hit's count is the re-ranking's (compact stored patch descriptors); the detail's own counts
// come from all patch tokens (docs/serve.md, "The page"): each is labelled where it shows.
function rerankText(n) {
  return "re-rank: " + n + " inlier" + (n === 1 ? "" : "s") + (n >= MIN_INLIERS ? ", verified" : "");
}

// --- one result: the two images side by side with the verified correspondences ---
async function openDetail(hit, opener) {
  state.detail = { hit, pairs: null, kind: "lines", opener };
  show("detail");
  $("detail-title").textContent = "#" + hit.rank + "  " + shown(hit.path);
  $("detail-title").focus();
  $("detail-stats").textContent = "matching...";
  $("pair-text").textContent = "";
  $("pair").setAttribute("aria-label", "correspondences, being computed");
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
    $("detail-stats").textContent = detailText(hit, m);
    const said = describePair(hit, m);
    $("pair").setAttribute("aria-label", said);
    $("pair-text").textContent = said;
    drawPair(-1);
  } catch (err) {
    $("detail-stats").textContent = err.message;
    status(err.message, true);
  }
}

function detailText(hit, m) {
  const parts = ["similarity " + hit.score.toFixed(4)];
  if (hit.inliers !== undefined) parts.push("re-ranking: " + hit.inliers + " inliers among the stored patch descriptors (" +
    (hit.inliers >= MIN_INLIERS ? "verified" : "not verified, " + MIN_INLIERS + " needed") + ")");
  parts.push("drawn here from all patch tokens: " + m.matches + " patch matches, " + m.inliers + " inliers (" +
    (m.verified ? "verified" : "not verified, " + m.min_inliers + " needed") + ")");
  return parts.join("; ");
}

function describePair(hit, m) {
  const box = m.query_box ? " (region " + m.query_box.map((v) => Math.round(v)).join(", ") + " of the query)" : "";
  const drawn = m.inliers === 0 ? "no inliers to draw" : m.lines.length === m.inliers ? "all " + m.inliers + " inliers drawn as lines"
    : m.lines.length + " of " + m.inliers + " inliers drawn as lines, spread over the query, the rest as dots";
  return "The query" + box + " and " + shown(baseName(hit.path)) + " side by side: " + drawn + ".";
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
  if (d.m.query_box) regionOnCanvas(g, d.m.query_box, L);
  d.pairs = d.m.pairs.map(([qx, qy, x, y], i) => ({ a: [qx * L.fq, qy * L.fq], b: [L.ox + x * L.fo, y * L.fo], s: d.m.similarity[i] }));
  // as the matches picture: its lines (same choice, order and colours), every other inlier a dot
  const line = new Map(d.m.lines.map((i, j) => [i, d.m.line_colours[j]]));
  d.drawn = [];
  d.pairs.forEach((p, i) => {
    if (line.has(i) || highlight === i) return;
    for (const [x, y] of [p.a, p.b]) {
      g.fillStyle = "rgba(255,255,255,.9)"; g.strokeStyle = "rgba(0,0,0,.6)"; g.lineWidth = 1;
      g.beginPath(); g.arc(x, y, 2.5, 0, 2 * Math.PI); g.fill(); g.stroke();
    }
  });
  for (const [i, hue] of line) {
    if (highlight === i) continue;
    strokePair(g, d.pairs[i], highlight >= 0 ? hue + "40" : hue + "d9", 1.5, 3);
    d.drawn.push(i);
  }
  if (highlight >= 0) strokePair(g, d.pairs[highlight], "#ffea00", 4, 7);
  if (highlight >= 0) { // the matched patch in the result, outlined
    const p = d.pairs[highlight], r = 12;
    g.strokeStyle = "#ffea00"; g.lineWidth = 3;
    g.strokeRect(p.b[0] - r, p.b[1] - r, 2 * r, 2 * r);
  }
}

function strokePair(g, p, style, width, r) {
  g.strokeStyle = style; g.fillStyle = style; g.lineWidth = width;
  g.beginPath(); g.moveTo(p.a[0], p.a[1]); g.lineTo(p.b[0], p.b[1]); g.stroke();
  for (const [x, y] of [p.a, p.b]) { g.beginPath(); g.arc(x, y, r, 0, 2 * Math.PI); g.fill(); }
}

// A region query: the rest of the query picture dimmed, the region outlined (the crop in place).
function regionOnCanvas(g, box, L) {
  const [x1, y1, x2, y2] = box.map((v) => v * L.fq), w = L.ox - L.gap;
  g.fillStyle = "rgba(255,255,255,.6)";
  g.fillRect(0, 0, w, y1); g.fillRect(0, y2, w, L.h - y2); g.fillRect(0, y1, x1, y2 - y1); g.fillRect(x2, y1, w - x2, y2 - y1);
  g.strokeStyle = "#ff3b30"; g.lineWidth = 2;
  g.strokeRect(x1, y1, x2 - x1, y2 - y1);
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
  for (const b of document.querySelectorAll(".kind")) {
    b.classList.toggle("active", b.dataset.kind === kind);
    b.setAttribute("aria-pressed", b.dataset.kind === kind ? "true" : "false");
  }
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

// --- duplicates (GET /api/duplicates), in the index view ---
async function loadDuplicates() {
  $("find-dups").disabled = true;
  $("dups-summary").textContent = "grouping...";
  try {
    const d = await (await api("/api/duplicates")).json();
    const box = $("dups");
    box.replaceChildren();
    const copies = d.groups.filter((g) => g.kind !== "similar").length;
    $("dups-summary").textContent = d.images + " images: " + copies + " groups of copies, " +
      (d.groups.length - copies) + " of similar shots";
    for (const g of d.groups) {
      const row = el("div", { class: "dup-group" });
      row.append(el("h4", { text: g.kind + ", " + g.members.length + " images" }));
      const pair = el("img", { class: "dup-pair", hidden: "" });
      for (const [i, m] of g.members.entries()) {
        const img = el("img", { alt: baseName(m.path) });
        imageURL("/api/images/" + m.id + "?max=160").then((u) => { img.src = u; }).catch(() => {});
        const fig = el("figure", {}, img, el("figcaption", {
          text: (i === 0 ? "keep: " : "") + m.width + "x" + m.height + " " + baseName(shown(m.path)),
        }));
        if (i > 0) {  // a copy: hovering or focusing it shows its patch matches with the keeper
          fig.tabIndex = 0;
          fig.title = "patch matches with the image to keep";
          const showPair = () => showDuplicatePair(pair, g.members[0], m);
          fig.addEventListener("mouseenter", showPair);
          fig.addEventListener("focus", showPair);
        }
        row.append(fig);
      }
      row.append(pair);
      box.append(row);
    }
  } catch (err) {
    $("dups-summary").textContent = err.message;
  } finally {
    $("find-dups").disabled = false;
  }
}
$("find-dups").addEventListener("click", loadDuplicates);

// The picture `retrieve dedupe --html` draws for a pair (GET /api/pairs/{a}/{b}/matches), the
// keeper on the left; only the latest one asked for is shown when several are on their way.
async function showDuplicatePair(img, keep, member) {
  const path = "/api/pairs/" + keep.id + "/" + member.id + "/matches?format=png";
  img.dataset.want = path;
  try {
    const u = await imageURL(path);
    if (img.dataset.want !== path) return;
    img.alt = "patch matches: " + baseName(shown(keep.path)) + " (keep) and " + baseName(shown(member.path));
    img.src = u;
    img.hidden = false;
  } catch (err) {
    if (img.dataset.want === path) $("dups-summary").textContent = err.message;
  }
}

function health() {
  api("/api/health").then((r) => r.json()).then((h) => status(h.images + " images indexed"))
    .catch((err) => status(err.message, true));
}
health();
