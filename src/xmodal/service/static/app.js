// xmodal web page: plain JS, no build step. Query state lives in the URL hash, so a search can
// be shared: #q=TEXT | #item=ID, plus &target=image|text&k=N&rel=1,2&nrel=3.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { q: "", item: null, target: "", k: 20, rel: new Set(), nrel: new Set(), image: null };

function apiKey() { return localStorage.getItem("xmodal-key") || ""; }
function headers(extra = {}) {
  const h = Object.assign({}, extra);
  if (apiKey()) h["X-API-Key"] = apiKey();
  return h;
}
function withKey(url) {
  return apiKey() ? url + (url.includes("?") ? "&" : "?") + "api_key=" + encodeURIComponent(apiKey()) : url;
}
function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.item !== null) p.set("item", state.item); else if (state.q) p.set("q", state.q);
  if (state.target) p.set("target", state.target);
  if (state.k !== 20) p.set("k", state.k);
  if (state.rel.size) p.set("rel", [...state.rel].join(","));
  if (state.nrel.size) p.set("nrel", [...state.nrel].join(","));
  const h = "#" + p.toString();
  if (location.hash !== h) history.replaceState(null, "", h);
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.q = p.get("q") || "";
  state.item = p.has("item") ? parseInt(p.get("item"), 10) : null;
  state.target = p.get("target") || "";
  state.k = parseInt(p.get("k") || "20", 10) || 20;
  const ids = (s) => new Set((s || "").split(",").filter(Boolean).map(Number));
  state.rel = ids(p.get("rel"));
  state.nrel = ids(p.get("nrel"));
  $("q").value = state.q;
  $("target").value = state.target;
  $("k").value = state.k;
}

async function errorText(r) {
  try {
    const j = await r.json();
    if (typeof j.detail === "string") return j.detail;
    if (Array.isArray(j.detail)) {  // FastAPI's validation errors: "field: message" each
      return j.detail.map((e) => {
        const field = (e.loc || []).filter((x) => x !== "body" && x !== "query").join(".");
        return (field ? field + ": " : "") + e.msg;
      }).join("; ");
    }
    return JSON.stringify(j.detail);
  } catch (e) { return r.statusText; }
}

let searchSeq = 0;  // the newest search: an older one's late answer is dropped, not shown

async function search() {
  const seq = ++searchSeq;
  try {
    await runSearch(seq);
  } catch (e) {  // the server is down or the connection dropped
    if (seq === searchSeq) setStatus("Error: " + e.message, true);
  }
}

async function runSearch(seq) {
  // Datasets repeat captions word for word: show each text once.
  const body = { k: state.k, relevant: [...state.rel], nonrelevant: [...state.nrel], distinct: true };
  if (state.target) body.target = state.target;
  const what = state.image ? "image " + state.image.name : state.item !== null ? "item " + state.item : "“" + state.q + "”";
  let r;
  setStatus("Searching…");
  if (state.image) {
    const fd = new FormData();
    fd.append("file", state.image);
    fd.append("k", state.k);
    if (state.target) fd.append("target", state.target);
    fd.append("relevant", body.relevant.join(","));
    fd.append("nonrelevant", body.nonrelevant.join(","));
    fd.append("distinct", "true");
    r = await fetch("/api/search/image", { method: "POST", body: fd, headers: headers() });
  } else if (state.item !== null) {
    body.item_id = state.item;
    r = await fetch("/api/search", { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }) });
  } else if (state.q) {
    body.text = state.q;
    r = await fetch("/api/search", { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }) });
  } else {
    $("results").replaceChildren();
    setStatus("");
    return;
  }
  if (seq !== searchSeq) return;
  if (!r.ok) {
    const err = await errorText(r);
    if (seq === searchSeq) setStatus("Error " + r.status + ": " + err, true);
    return;
  }
  const data = await r.json();
  if (seq !== searchSeq) return;
  render(data.results);
  let text = data.results.length + " " + (data.target === "image" ? "images" : "captions") + " for " + what;
  const failed = data.failed_shards || [];  // a routing server's shards that did not answer
  if (failed.length) {
    text += " · not searched: " + failed.map((f) => new URL(f.shard).host).join(", ");
    $("status").title = failed.map((f) => f.error).join("\n");
  } else {
    $("status").title = "";
  }
  setStatus(text, failed.length > 0);
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const h of results) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = h.id;
    if (!h.shard && state.rel.has(h.id)) card.classList.add("relevant");  // remote ids are another server's
    if (!h.shard && state.nrel.has(h.id)) card.classList.add("nonrelevant");
    let pic;
    if (h.thumbnail) {
      pic = document.createElement("img");
      pic.src = h.shard ? h.thumbnail : withKey(h.thumbnail);  // our key is not for other servers
      pic.alt = h.caption || h.key;
      pic.loading = "lazy";
    } else {
      pic = document.createElement("div");
      pic.className = "noimg";
      pic.textContent = "text";
    }
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = h.caption || h.key;
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = h.score.toFixed(3) + " · #" + h.id;
    if (h.shard) {  // another server's item: its id means nothing here, so no "more like this"
      score.textContent += " @ " + new URL(h.shard).host;
      card.classList.add("remote");
      meta.append(score);
      card.append(pic, cap, meta);
      grid.append(card);
      continue;
    }
    pic.title = "Search by this " + h.modality;
    pic.addEventListener("click", () => byItem(h.id));
    cap.addEventListener("click", () => byItem(h.id));
    const up = document.createElement("button");
    up.className = "up"; up.textContent = "✓"; up.title = "relevant";
    up.addEventListener("click", () => mark(h.id, "rel"));
    const down = document.createElement("button");
    down.className = "down"; down.textContent = "✗"; down.title = "not relevant";
    down.addEventListener("click", () => mark(h.id, "nrel"));
    const btns = document.createElement("span");
    btns.append(up, down);
    meta.append(score, btns);
    card.append(pic, cap, meta);
    grid.append(card);
  }
  updateFeedbackBar();
}

function updateFeedbackBar() {
  const n = state.rel.size + state.nrel.size;
  $("feedback-bar").hidden = n === 0;
  $("feedback-count").textContent = state.rel.size + " relevant, " + state.nrel.size + " not relevant";
}

function mark(id, which) {
  const [set, other] = which === "rel" ? [state.rel, state.nrel] : [state.nrel, state.rel];
  other.delete(id);
  if (set.has(id)) set.delete(id); else set.add(id);
  for (const card of document.querySelectorAll(".card:not(.remote)")) {
    const cid = Number(card.dataset.id);
    card.classList.toggle("relevant", state.rel.has(cid));
    card.classList.toggle("nonrelevant", state.nrel.has(cid));
  }
  writeHash();
  updateFeedbackBar();
}

function clearFeedback() { state.rel.clear(); state.nrel.clear(); }

function byItem(id) {
  state.item = id; state.q = ""; state.image = null; clearFeedback();
  $("q").value = "";
  writeHash();
  search();
}

function byImage(file) {
  if (!file) return;
  state.image = file; state.item = null; state.q = ""; clearFeedback();
  $("q").value = "";
  writeHash();  // an uploaded image cannot live in the URL
  search();
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.q = $("q").value.trim(); state.item = null; state.image = null;
  state.target = $("target").value;
  state.k = parseInt($("k").value, 10) || 20;
  clearFeedback();
  writeHash();
  search();
});
$("target").addEventListener("change", () => { state.target = $("target").value; writeHash(); search(); });
$("refine").addEventListener("click", () => search());
$("clear-feedback").addEventListener("click", () => { clearFeedback(); writeHash(); search(); });
$("file").addEventListener("change", (e) => byImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) byImage(e.dataTransfer.files[0]);
});
$("api-key").value = apiKey();
$("api-key").addEventListener("change", (e) => { localStorage.setItem("xmodal-key", e.target.value.trim()); search(); });
// writeHash() uses replaceState, which fires no hashchange: this is the user opening a link
// or going back, so the URL is the query now, also after an image upload.
window.addEventListener("hashchange", () => { readHash(); state.image = null; search(); });
readHash();
search();
