// retriever's page: plain ES module, no build step, no network beyond this server.
const $ = (sel) => document.querySelector(sel);
const results = $("#results");
const statusLine = $("#status");
const viewer = $("#viewer");
let hits = [];       // the results shown, in order
let current = -1;    // index into hits of the photo in the viewer

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function filterParams() {
  const params = new URLSearchParams();
  for (const input of document.querySelectorAll("#filters input")) {
    const value = input.value.trim();
    if (!value) continue;
    // camera, format, the tag filters and in take several values, comma-separated here
    const many = ["camera", "format", "tag", "tag_any", "no_tag", "in"].includes(input.name);
    for (const v of many ? value.split(",") : [value]) if (v.trim()) params.append(input.name, v.trim());
  }
  if (!params.has("k")) params.set("k", "24");
  return params;
}

async function call(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function basename(path) { return path.split("/").pop(); }

function show(found, description, cited = []) {
  hits = found;
  results.replaceChildren();
  found.forEach((hit, i) => {
    const li = document.createElement("li");
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card" + (cited.includes(hit.id) ? " cited" : "");
    card.dataset.index = i;
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = basename(hit.path);
    img.src = `api/images/${hit.id}/thumbnail`;
    const caption = document.createElement("span");
    caption.className = "caption";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = basename(hit.path) + (hit.timestamp ? `@${hit.timestamp}` : "");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(name, score);
    card.append(img, caption);
    card.setAttribute("aria-label", `${i + 1}: ${name.textContent}, score ${score.textContent}`);
    card.addEventListener("click", () => openViewer(i));
    li.append(card);
    results.append(li);
  });
  say(found.length ? `${found.length} results ${description}` : `no results ${description}`);
}

async function search(q) {
  const params = filterParams();
  params.set("q", q);
  say("searching…");
  try {
    const body = await call(`api/search?${params}`);
    const conditions = body.filters.length ? ` (${body.filters.join("; ")})` : "";
    show(body.results, `for “${q}”${conditions}`);
    history.replaceState(null, "", `?q=${encodeURIComponent(q)}`);
  } catch (e) { say(e.message, true); }
}

async function similarTo(hit) {
  const params = filterParams();
  params.set("id", hit.id);
  say("searching…");
  try {
    const body = await call(`api/similar?${params}`);
    show(body.results, `like ${basename(hit.path)}`);
  } catch (e) { say(e.message, true); }
}

async function similarToFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  say(`searching by ${file.name}…`);
  try {
    const body = await call(`api/similar?${filterParams()}`, { method: "POST", body: form });
    show(body.results, `like ${file.name}`);
  } catch (e) { say(e.message, true); }
}

async function ask(question) {
  const params = filterParams();
  params.set("q", question);
  params.set("k", "4");
  say("asking… (the model reads the photos, this takes a while)");
  try {
    const body = await call(`api/ask?${params}`);
    $("#answer-text").textContent = body.answer;
    $("#answer").hidden = false;
    const photos = body.photos.filter((p) => p.id !== undefined);
    const cited = photos.filter((p) => p.cited).map((p) => p.id);
    show(photos, `shown to ${body.model}`, cited);
  } catch (e) { say(e.message, true); }
}

// -- the viewer -------------------------------------------------------------------------------

const META_SHOWN = ["score", "date", "width", "height", "format", "camera_make", "camera_model",
                    "gps_lat", "gps_lon", "size", "timestamp", "path"];

// A photo's tags: click one to search again with it as a filter; x removes a wrong one (the
// removal is stored: re-tagging keeps it off).
function showTags(hit) {
  const list = $("#viewer-tags");
  list.replaceChildren();
  for (const { label, score } of hit.tag_scores || []) {
    const li = document.createElement("li");
    const filter = document.createElement("button");
    filter.type = "button";
    filter.className = "tag";
    filter.textContent = `${label} ${Number(score).toFixed(2)}`;
    filter.title = `only photos tagged ${label}`;
    filter.addEventListener("click", () => {
      document.querySelector('#filters input[name="tag"]').value = label;
      $("#filters").open = true;
      closeViewer();
      search($("#q").value.trim() || label);
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "untag";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `remove the tag ${label} from this photo`);
    remove.addEventListener("click", async () => {
      try {
        await call(`api/images/${hit.id}/tags/${encodeURIComponent(label)}`, { method: "DELETE" });
        hit.tag_scores = hit.tag_scores.filter((t) => t.label !== label);
        hit.tags = (hit.tags || []).filter((t) => t !== label);
        showTags(hit);
        say(`removed the tag “${label}” from ${basename(hit.path)}`);
      } catch (e) { say(e.message, true); }
    });
    li.append(filter, remove);
    list.append(li);
  }
}

function openViewer(i) {
  current = i;
  const hit = hits[i];
  $("#viewer-img").src = `api/images/${hit.id}/thumbnail?side=1024`;
  $("#viewer-img").alt = basename(hit.path);
  $("#viewer-title").textContent = basename(hit.path);
  $("#viewer-original").href = `api/images/${hit.id}`;
  const dl = $("#viewer-meta");
  dl.replaceChildren();
  for (const key of META_SHOWN) {
    let value = hit[key];
    if (value === undefined || value === null || (Array.isArray(value) && !value.length)) continue;
    if (Array.isArray(value)) value = value.join(", ");
    if (key === "score") value = Number(value).toFixed(4);
    const dt = document.createElement("dt");
    dt.textContent = key.replace("_", " ");
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  showTags(hit);
  if (!viewer.open) viewer.showModal();
  $("#more").focus();
}

function closeViewer() {
  if (viewer.open) viewer.close();
}

viewer.addEventListener("close", () => {
  const card = results.querySelector(`[data-index="${Math.max(current, 0)}"]`);
  if (card) card.focus();
});
viewer.addEventListener("keydown", (e) => {
  if (e.key === "ArrowRight" && current < hits.length - 1) { openViewer(current + 1); e.preventDefault(); }
  if (e.key === "ArrowLeft" && current > 0) { openViewer(current - 1); e.preventDefault(); }
});
viewer.addEventListener("click", (e) => { if (e.target === viewer) closeViewer(); });
$("#viewer-close").addEventListener("click", closeViewer);
$("#more").addEventListener("click", () => {
  const hit = hits[current];
  current = -1;  // the grid is about to be replaced: focus goes to its first card instead
  closeViewer();
  similarTo(hit);
});

// arrow keys move between results in the grid
results.addEventListener("keydown", (e) => {
  const card = e.target.closest(".card");
  if (!card) return;
  const i = Number(card.dataset.index);
  // the grid's own column count (width / card width over-counts by the gaps on wide screens)
  const perRow = Math.max(1, getComputedStyle(results).gridTemplateColumns.split(" ").length);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[e.key];
  if (step === undefined) return;
  const next = results.querySelector(`[data-index="${i + step}"]`);
  if (next) { next.focus(); e.preventDefault(); }
});

// -- forms, upload, drag and drop -------------------------------------------------------------

$("#search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("#q").value.trim();
  if (q) search(q);
});
$("#upload").addEventListener("change", (e) => similarToFile(e.target.files[0]));
$("#ask-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("#ask").value.trim();
  if (q) ask(q);
});

let dragDepth = 0;
document.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("#drop-hint").hidden = false; });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("#drop-hint").hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("#drop-hint").hidden = true;
  const file = [...(e.dataTransfer.files || [])].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
  similarToFile(file);
});

// -- start ------------------------------------------------------------------------------------

call("api/status").then((status) => {
  $("#ask-form").hidden = !status.vlm;
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("#q").value = q; search(q); }
  else say(`${status.images} photos in index “${status.index}”, model ${status.model_id}`);
}).catch((e) => say(e.message, true));
