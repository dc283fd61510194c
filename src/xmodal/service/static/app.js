// xmodal web page: plain JS, no build step. Query state lives in the URL hash, so a search can
// be shared: #q=TEXT | #item=ID, plus &target=image|text&k=N&labels=a,b&rel=1,2&nrel=3.
// Everything the server sends (captions, labels, keys, errors) goes in as text (textContent,
// attributes), never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { q: "", item: null, target: "", k: 20, labels: "", rel: new Set(), nrel: new Set(), image: null, upload: null };
// An uploaded image cannot live in the URL: its history entry holds a number for the file,
// kept while the page is open (the last few), so Back can return to its search.
const uploads = new Map();
let uploadCount = 0;
let lostUpload = false;  // the entry shown is an image search whose file is gone
let emptyAsked = false;  // Search pressed with nothing to search by: said, not a blank page

function apiKey() { return localStorage.getItem("xmodal-key") || ""; }
function headers(extra = {}) {
  const h = Object.assign({}, extra);
  if (apiKey()) h["X-API-Key"] = apiKey();
  return h;
}
// With a key, thumbnails are fetched with the key header and shown as blob: URLs: a key in
// an <img> URL would end up in access logs, proxy logs and history (the server refuses it).
// They are fetched as they come near the screen, as loading="lazy" would.
let blobUrls = [];
const thumbObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    thumbObserver.unobserve(e.target);
    loadKeyed(e.target);
  }
}, { rootMargin: "300px" });

async function loadKeyed(img) {
  try {
    const r = await fetch(img.dataset.src, { headers: headers() });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const blob = await r.blob();
    if (!img.isConnected) return;  // a newer search replaced it meanwhile
    const url = URL.createObjectURL(blob);
    blobUrls.push(url);
    img.src = url;
  } catch (e) {
    img.dispatchEvent(new Event("error"));  // the placeholder, as for a thumbnail that fails
  }
}

function dropThumbs() {  // the previous results' pictures: fetches stopped, memory freed
  thumbObserver.disconnect();
  for (const u of blobUrls) URL.revokeObjectURL(u);
  blobUrls = [];
}
function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}
function hostOf(url) {
  try { return new URL(url).host; } catch (e) { return String(url); }
}

// k as a number box reads it ("1e1" is ten; parseInt made it 1); anything else (hex, "5abc",
// a fraction): the default 20
function kValue(s) {
  const t = (s || "").trim();
  const n = /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(t) ? Number(t) : NaN;
  return Number.isInteger(n) ? n : 20;
}

function labelList(s) { return s.split(",").map((x) => x.trim()).filter(Boolean); }

// A new query (push) is a history entry of its own, so Back and Forward go through the
// searches; marking results or cleaning a link's URL replaces the current entry.
function writeHash(push = false) {
  const p = new URLSearchParams();
  if (state.item !== null) p.set("item", state.item); else if (state.q) p.set("q", state.q);
  if (state.target) p.set("target", state.target);
  if (state.k !== 20) p.set("k", state.k);
  if (state.labels) p.set("labels", state.labels);
  if (state.rel.size) p.set("rel", [...state.rel].join(","));
  if (state.nrel.size) p.set("nrel", [...state.nrel].join(","));
  const h = "#" + p.toString();
  const upload = state.image ? state.upload : null;
  if ((location.hash || "#") === h && ((history.state || {}).upload ?? null) === upload) return;
  if (push) history.pushState({ upload }, "", h); else history.replaceState({ upload }, "", h);
}

function readHash() {
  // a link is typed, pasted or cut short by hand: what is not an id or a number is dropped
  // here (the server would answer 422 for it), not sent
  const p = new URLSearchParams(location.hash.slice(1));
  const isId = (s) => /^\d+$/.test(s.trim());
  state.q = p.get("q") || "";
  state.item = p.has("item") && isId(p.get("item")) ? parseInt(p.get("item"), 10) : null;
  state.target = ["image", "text"].includes(p.get("target")) ? p.get("target") : "";
  state.k = kValue(p.get("k"));  // out of 1..1000: the server's 422 says so
  state.labels = labelList(p.get("labels") || "").join(", ");
  const ids = (s) => new Set((s || "").split(",").filter(isId).map(Number));
  state.rel = ids(p.get("rel"));
  state.nrel = ids(p.get("nrel"));
  $("q").value = state.q;
  $("target").value = state.target;
  $("k").value = state.k;
  $("labels").value = state.labels;
}

async function errorText(r) {
  const raw = await r.text().catch(() => "");
  try {
    const j = JSON.parse(raw);
    if (typeof j.detail === "string") return j.detail;
    if (Array.isArray(j.detail)) {  // FastAPI's validation errors: "field: message" each
      return j.detail.map((e) => {
        const field = ((e && e.loc) || []).filter((x) => x !== "body" && x !== "query").join(".");
        return (field ? field + ": " : "") + ((e && e.msg) || "invalid");
      }).join("; ");
    }
    // another server's JSON (a proxy's, a gateway's): shown as sent, cut short, never "undefined"
    const shown = JSON.stringify(j.detail !== undefined ? j.detail : j);
    return shown.length > 300 ? shown.slice(0, 300) + "…" : shown;
  } catch (e) {  // not xmodal's JSON: a proxy's page, say
    return r.statusText || "the server gave no details";
  }
}

// A refusal another key would answer: 401, or a 403 naming the key's role (a read-only
// server's 403 is no key's fault)
function needsKey(status, detail) {
  return status === 401 || (status === 403 && / has role /.test(detail));
}

// fetch, with a refused or dropped connection said as such (the browser's own words are
// "Failed to fetch"). A server that takes the connection and never answers (stopped, a hung
// proxy) is given up on after giveUpS seconds, the answer's body included: the page says so
// rather than "Searching…" for good.
const SLOW_S = 10;  // "still waiting" from then on
const GIVE_UP_S = 60;  // a search
const GIVE_UP_UPLOAD_S = 180;  // an upload of up to --max-upload-mb, over a slow link
async function call(url, opts, giveUpS = GIVE_UP_S) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), giveUpS * 1000);
  // opts.signal: the caller's own abort (a search replaced by a newer one)
  if (opts.signal) opts.signal.addEventListener("abort", () => ctrl.abort());
  try {
    const r = await fetch(url, Object.assign({}, opts, { signal: ctrl.signal }));
    const text = await r.text();  // read under the same time limit
    const empty = [204, 205, 304].includes(r.status);  // a Response of these may have no body
    return new Response(empty ? null : text, { status: r.status, statusText: r.statusText, headers: r.headers });
  } catch (e) {
    if (ctrl.signal.aborted) throw new Error("the server did not answer within " + giveUpS + " s; is it running?");
    throw new Error("the server did not answer (" + e.message + "); is it running?");
  } finally {
    clearTimeout(timer);
  }
}

// GET /api/info, kept once read (a read-only flag and an upload limit do not change while the
// server runs); null while it cannot be read (no key yet, the server away): nothing assumed.
let info = null;
async function serverInfo() {
  if (info) return info;
  try {
    const r = await call("/api/info", { headers: headers() });
    if (r.ok) info = await r.json();
  } catch (e) {
    // unknown: the server says what it refuses
  }
  return info;
}
// A file over the server's upload limit: said before sending it (it answered 413 only after
// the whole file had gone up). "" when it fits or the limit is unknown.
async function tooLarge(file) {
  const limit = (await serverInfo() || {}).max_upload_bytes;
  if (!limit || file.size <= limit) return "";
  const mib = (n) => (n / 1048576).toFixed(1) + " MiB";
  return file.name + " is " + mib(file.size) + ", over this server's upload limit of " + mib(limit) + " (xmodal serve --max-upload-mb); nothing was sent.";
}

// A 200 whose body is not xmodal's JSON: a proxy's or a captive portal's page answered
function notOurs(r) {
  return "Error: the answer (" + (r.headers.get("Content-Type") || "no type") + ") is not xmodal's answer: is a proxy in between?";
}

let searchSeq = 0;  // the newest search: an older one's late answer is dropped, not shown

let searchAbort = null;  // the search in flight: a newer one stops it (an upload stops sending)

async function search() {
  const seq = ++searchSeq;
  if (searchAbort) searchAbort.abort();
  searchAbort = new AbortController();
  try {
    await runSearch(seq);
  } catch (e) {  // the server is down or the connection dropped
    if (seq === searchSeq) showError("Error: " + e.message);
  }
}

function clearResults() {
  $("results").replaceChildren();
  $("more").hidden = true;
  dropThumbs();  // their blob: pictures too, not kept until the next results
}

function showError(text) {
  // the results on the page are an earlier query's: not left beside an error about this one
  clearResults();
  setStatus(text, true);
  updateFeedbackBar();  // marks a link carried that the server refused can be cleared
}

async function runSearch(seq) {
  // Datasets repeat captions word for word: show each text once.
  const body = { k: state.k, relevant: [...state.rel], nonrelevant: [...state.nrel], distinct: true };
  if (state.target) body.target = state.target;
  const labels = labelList(state.labels);
  if (labels.length) body.labels = labels;
  // a query of 2,000 characters (or a file's long name) is cut short in the status line
  const cut = (t) => t.length > 80 ? t.slice(0, 80) + "…" : t;
  const what = state.image ? "image " + cut(state.image.name) : state.item !== null ? "item " + state.item : "“" + cut(state.q) + "”";
  // the window title names the search: history's entries and the Back menu tell them apart
  const named = state.image || state.item !== null ? what : cut(state.q);
  document.title = named ? named + " – xmodal search" : "xmodal search";
  if (state.image) {
    const big = await tooLarge(state.image);
    if (big) { if (seq === searchSeq) { clearResults(); setStatus(big, true); } return; }
  }
  let r;
  setStatus("Searching…");
  const slow = setTimeout(() => {  // a slow server said as such, not a page that looks stuck
    if (seq === searchSeq) setStatus("Searching… the server has not answered for " + SLOW_S + " s; still waiting.");
  }, SLOW_S * 1000);
  try {
    r = await send(body, labels);
  } finally {
    clearTimeout(slow);
  }
  if (seq !== searchSeq) return;
  if (r === null) {
    clearResults();
    // an image search's entry whose file is not kept (the page reloaded since): not a blank page
    const lost = lostUpload, asked = emptyAsked;
    lostUpload = emptyAsked = false;
    setStatus(lost ? "The image searched by here is not kept once the page reloads: choose it again, or drop it."
      : asked ? "Type what you are looking for, or drop an image to search by it." : "");
    return;
  }
  if (!r.ok) {
    const err = await errorText(r);
    if (seq !== searchSeq) return;
    showError("Error " + r.status + ": " + err);
    if (needsKey(r.status, err)) $("key-box").open = true;  // where a key goes
    return;
  }
  let data;
  try {
    data = await r.json();
    if (!Array.isArray(data.results)) throw new Error("no results");
  } catch (e) {  // a proxy's or a captive portal's page answered in its place
    if (seq === searchSeq) showError(notOurs(r));
    return;
  }
  if (seq !== searchSeq) return;
  render(data.results);
  // a full page may have more behind it (k reaches 1000 at most over HTTP)
  $("more").hidden = !(data.results.length >= state.k && state.k < K_MAX);
  if (focusFrom !== null) {  // "Show more": focus goes to the first result that is new
    const cards = $("results").querySelectorAll(".card");
    const next = cards[Math.min(focusFrom, cards.length - 1)];
    const target = next && next.querySelector("[tabindex='0']");
    if (target) target.focus();
    focusFrom = null;
  } else if (focusResults) {
    focusResults = false;
    const first = $("results").querySelector("[tabindex='0']");
    if (first) first.focus();
  }
  let text = data.results.length + " " + (data.target === "image" ? "images" : "captions") + " for " + what;
  if (labels.length) text += " labelled " + labels.join(" or ");
  const failed = data.failed_shards || [];  // a routing server's shards that did not answer
  if (failed.length) {
    text += " · not searched: " + failed.map((f) => hostOf(f.shard)).join(", ");
    $("status").title = failed.map((f) => f.error).join("\n");
  } else {
    $("status").title = "";
  }
  setStatus(text, failed.length > 0);
}

// The request for the query in state: its Response, or null when there is nothing to search by.
function send(body, labels) {
  if (state.image) {
    const fd = new FormData();
    fd.append("file", state.image);
    fd.append("k", state.k);
    if (state.target) fd.append("target", state.target);
    fd.append("labels", labels.join(","));
    fd.append("relevant", body.relevant.join(","));
    fd.append("nonrelevant", body.nonrelevant.join(","));
    fd.append("distinct", "true");
    return call("/api/search/image", { method: "POST", body: fd, headers: headers(), signal: searchAbort.signal }, GIVE_UP_UPLOAD_S);
  } else if (state.item !== null) {
    body.item_id = state.item;
    return call("/api/search", { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }), signal: searchAbort.signal });
  } else if (state.q) {
    body.text = state.q;
    return call("/api/search", { method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }), signal: searchAbort.signal });
  }
  return null;  // nothing to search by
}

// Something to click (or press Enter / Space on) for "more like this".
// A keyboard user's "more like this" replaces the focused card: focus then goes to the new
// results, not back to the top of the page.
let focusResults = false;
let focusFrom = null;  // after "Show more": the position of the first new result
const K_MAX = 1000;  // the API's largest k
const K_STEP = 20;  // what "Show more" adds
$("more").addEventListener("click", () => {
  focusFrom = state.k;
  state.k = Math.min(K_MAX, state.k + K_STEP);
  $("k").value = state.k;
  writeHash();  // the same search, longer: no new history entry
  search();
});

function actionable(el, label, action) {
  el.tabIndex = 0;
  el.setAttribute("role", "button");
  el.setAttribute("aria-label", label);
  el.addEventListener("click", action);
  el.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); focusResults = true; action(); }
  });
}

function placeholder(text) {
  const d = document.createElement("div");
  d.className = "noimg";
  d.textContent = text;
  return d;
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren();
  dropThumbs();
  for (const h of results) {
    const card = document.createElement("div");
    card.className = "card";
    card.setAttribute("role", "listitem");  // the grid is a list to a screen reader: "list, 20 items"
    card.dataset.id = h.id;
    const shown = h.caption || h.key;
    const more = "More like this: " + (shown.length > 120 ? shown.slice(0, 120) + "…" : shown);
    const local = !h.shard;  // another server's item: its id means nothing here, so no "more like this"
    const wire = (el) => { if (local) actionable(el, more, () => byItem(h.id)); };
    let pic;
    if (h.thumbnail) {
      pic = document.createElement("img");
      // a remote shard's picture comes through this server (proxy_thumbnail: our key, the
      // router holds the shard's); an older server sends only the shard's own URL
      const src = local ? h.thumbnail : h.proxy_thumbnail;
      const sized = (u, size) => u + (u.includes("?") ? "&" : "?") + "size=" + size;
      if (src && apiKey()) {
        pic.dataset.src = sized(src, window.devicePixelRatio > 1 ? 512 : 256);  // sharp on a high-density screen
        thumbObserver.observe(pic);
      } else {
        const at = (size) => sized(src || h.thumbnail, size);
        pic.src = at(256);
        pic.srcset = at(256) + " 256w, " + at(512) + " 512w";  // sharp on a high-density screen
        pic.sizes = "(max-width: 480px) 50vw, 260px";
        pic.loading = "lazy";
      }
      pic.alt = shown;
      pic.addEventListener("error", () => {  // file gone, unreadable, or the shard down
        const ph = placeholder("no thumbnail");
        wire(ph);
        pic.replaceWith(ph);
      }, { once: true });
    } else {
      pic = placeholder("text");
    }
    wire(pic);
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = shown;
    cap.title = shown;  // whole, however long: the card shows a few lines
    cap.id = "cap-" + (local ? "" : hostOf(h.shard) + "-") + h.id;
    if (local) cap.addEventListener("click", () => byItem(h.id));  // the picture is the keyboard's way in
    card.append(pic, cap);
    if (h.labels && h.labels.length) {
      const labs = document.createElement("div");
      labs.className = "labels";
      labs.textContent = h.labels.join(", ");
      card.append(labs);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = h.score.toFixed(3) + " · #" + h.id;
    // what the bare numbers are (the answer's score: cosine, or 1 - 2*hamming/bits for codes)
    score.title = "similarity to the query (higher is closer) · item id " + h.id;
    if (!local) {
      score.textContent += " @ " + hostOf(h.shard);
      card.classList.add("remote");
      meta.append(score);
      card.append(meta);
      grid.append(card);
      continue;
    }
    const up = document.createElement("button");
    up.type = "button"; up.className = "up"; up.textContent = "✓"; up.title = "relevant";
    up.setAttribute("aria-label", "relevant");
    up.setAttribute("aria-describedby", cap.id);  // a list of buttons says which result each marks
    up.addEventListener("click", () => mark(h.id, "rel"));
    const down = document.createElement("button");
    down.type = "button"; down.className = "down"; down.textContent = "✗"; down.title = "not relevant";
    down.setAttribute("aria-label", "not relevant");
    down.setAttribute("aria-describedby", cap.id);
    down.addEventListener("click", () => mark(h.id, "nrel"));
    const btns = document.createElement("span");
    btns.className = "marks";
    btns.append(up, down);
    meta.append(score, btns);
    card.append(meta);
    grid.append(card);
  }
  markCards();
  updateFeedbackBar();
}

function markCards() {
  for (const card of document.querySelectorAll(".card:not(.remote)")) {
    const cid = Number(card.dataset.id);
    card.classList.toggle("relevant", state.rel.has(cid));
    card.classList.toggle("nonrelevant", state.nrel.has(cid));
    card.querySelector("button.up").setAttribute("aria-pressed", String(state.rel.has(cid)));
    card.querySelector("button.down").setAttribute("aria-pressed", String(state.nrel.has(cid)));
  }
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
  markCards();
  writeHash();
  updateFeedbackBar();
}

function clearFeedback() { state.rel.clear(); state.nrel.clear(); }

function byItem(id) {
  state.item = id; state.q = ""; state.image = null; clearFeedback();
  $("q").value = "";
  writeHash(true);
  search();
}

function byImage(file) {
  if (!file) return;
  state.image = file; state.item = null; state.q = ""; clearFeedback();
  state.upload = ++uploadCount;
  uploads.set(state.upload, file);
  uploads.delete(state.upload - 20);  // older ones: Back finds an empty search there
  $("q").value = "";
  writeHash(true);
  search();
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  // With the box empty, the image or item searched by is searched again with the new k,
  // labels and target; typed text replaces it
  const q = $("q").value.trim();
  if (q || (state.image === null && state.item === null)) { state.q = q; state.item = null; state.image = null; }
  state.target = $("target").value;
  state.k = kValue($("k").value);
  state.labels = labelList($("labels").value).join(", ");
  emptyAsked = !state.q && state.image === null && state.item === null;
  clearFeedback();
  writeHash(true);
  search();
});
$("target").addEventListener("change", () => { state.target = $("target").value; writeHash(true); search(); });
$("refine").addEventListener("click", () => search());
$("clear-feedback").addEventListener("click", () => { clearFeedback(); writeHash(); search(); });
$("file").addEventListener("change", (e) => {
  byImage(e.target.files[0]);
  e.target.value = "";  // the same file chosen again is a change too
});
const drop = $("drop");
drop.addEventListener("keydown", (e) => {  // the hidden file input cannot take focus itself
  if (e.target === drop && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); $("file").click(); }
});
drop.addEventListener("click", (e) => {  // a button to a mouse and a screen reader too (the link opens it itself)
  if (e.target === drop) $("file").click();
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) byImage(e.dataTransfer.files[0]);
  // text, or a picture dragged from another page (its link, no file): said, not ignored
  else setStatus("Drop an image file (from your computer), or choose one; a picture dragged from a web page has to be saved first.", true);
});
// A read-only server takes nothing: said when the form opens, before a file and its captions
// are chosen (a 403 after Add said it only then). /api/info needs reading: unknown, unchanged.
$("add-box").addEventListener("toggle", async () => {
  if (!$("add-box").open) return;
  const got = await serverInfo();
  if (!got) return;  // the server is away or needs a key: Add says so when pressed
  const ro = got.read_only === true;
  $("add-go").disabled = ro;
  $("add-box").querySelector(".hint").textContent = ro ? "this server is read-only: nothing can be added here" : "needs a write key";
});
// Add an image (and its captions) to the collection: POST /api/items with a write key.
$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("add-file").files[0];
  const out = $("add-status");
  const say = (text, error = false) => { out.textContent = text; out.className = error ? "error" : ""; };
  if (!file) { say("Choose an image to add.", true); return; }
  const big = await tooLarge(file);
  if (big) { say(big, true); return; }
  const fd = new FormData();
  fd.append("file", file);
  fd.append("captions", $("add-captions").value);
  fd.append("labels", $("add-labels").value);
  say("Adding " + file.name + "…");
  try {
    const r = await call("/api/items", { method: "POST", body: fd, headers: headers() }, GIVE_UP_UPLOAD_S);
    if (!r.ok) {
      const err = await errorText(r);
      say("Error " + r.status + ": " + err, true);
      if (needsKey(r.status, err)) $("key-box").open = true;  // where a key goes
      return;
    }
    let data;
    try {
      data = await r.json();
    } catch (e) {  // a proxy's or a captive portal's page answered in its place
      say(notOurs(r), true);
      return;
    }
    const caps = data.ids ? data.ids.length - 1 : 0;
    say(r.status === 201
      ? "Added " + file.name + " as image #" + data.id + " with " + caps + " caption" + (caps === 1 ? "" : "s") + "."
      : file.name + " is already stored, as image #" + data.id + "; nothing added.");
  } catch (err) {
    say("Error: " + err.message, true);
  }
});

function keyChanged() {
  const v = $("api-key").value.trim();
  localStorage.setItem("xmodal-key", v);
  search();
}
$("api-key").value = apiKey();
$("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); keyChanged(); } });
$("api-key").addEventListener("change", () => { if ($("api-key").value.trim() !== apiKey()) keyChanged(); });
// pushState and replaceState fire no popstate: this is the user opening a link or going back
// or forward, so the URL is the query now (with the entry's uploaded image, if it is kept).
window.addEventListener("popstate", (e) => {
  readHash();
  const upload = e.state && e.state.upload;
  state.image = uploads.get(upload) || null;
  state.upload = state.image ? upload : null;
  lostUpload = upload != null && !state.image;
  writeHash();
  search();
});
readHash();
lostUpload = history.state != null && history.state.upload != null;  // a reload forgets the files
writeHash();  // a link's ids that were dropped leave the URL too
search();
