// retriever's page: plain ES module, no build step, no network beyond this server.
const $ = (sel) => document.querySelector(sel);
const results = $("#results");
const statusLine = $("#status");
const viewer = $("#viewer");
let hits = [];       // the results shown, in order
let current = -1;    // index into hits of the photo in the viewer
let vlmBoxes = false;  // the server's model writes boxes: ask with boxes=1, "Find in this photo"

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
  // "only photos it accepts": the concept in the bar as a filter (on every search, similar and ask)
  const name = conceptName();
  if (name && $("#concept-only").checked) params.append("concept", name);
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
    const thumb = document.createElement("span");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = basename(hit.path);
    img.src = `api/images/${hit.id}/thumbnail`;
    thumb.append(img);
    const region = regionOf(hit);
    if (region) thumb.append(regionOverlay(hit, region));
    const caption = document.createElement("span");
    caption.className = "caption";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = basename(hit.path) + (hit.timestamp ? `@${hit.timestamp}` : "");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(name, score);
    card.append(thumb, caption);
    card.setAttribute("aria-label", `${i + 1}: ${name.textContent}, score ${score.textContent}`
                      + (region ? ", a part of it matched" : ""));
    card.addEventListener("click", () => openViewer(i));
    li.append(card, markButtons(hit));
    results.append(li);
  });
  paintMarks();
  say(found.length ? `${found.length} results ${description}` : `no results ${description}`);
}

// q: the search box; text: the "text in photo" box (the photos whose text contains it). Either
// may be empty: text alone lists the photos with that text, the best match first.
// note: said before the count (what a mark just did).
async function search(q, text = "", note = "") {
  const params = filterParams();
  if (q) params.set("q", q);
  if (text) params.append("text", text);
  say("searching…");
  try {
    const body = await call(`api/search?${params}`);
    const conditions = body.filters.length ? ` (${body.filters.join("; ")})` : "";
    show(body.results, `${q ? `for “${q}”` : "by the text in them"}${conditions}`);
    if (note) say(`${note}${statusLine.textContent}`);
    const address = [];
    if (q) address.push(`q=${encodeURIComponent(q)}`);
    if (text) address.push(`text=${encodeURIComponent(text)}`);
    if (conceptName()) address.push(`concept=${encodeURIComponent(conceptName())}`);
    history.replaceState(null, "", `?${address.join("&")}`);
  } catch (e) { say(e.message, true); }
}

function searchBoxes() {
  return [$("#q").value.trim(), $("#text").value.trim()];
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

// box: [x0, y0, x1, y1] in the photo's pixels, a part dragged out over it in the viewer
async function similarToRegion(hit, box) {
  const params = filterParams();
  params.set("id", hit.id);
  params.set("box", box.join(","));
  say("searching…");
  try {
    const body = await call(`api/similar?${params}`);
    show(body.results, `like a part of ${basename(hit.path)} (${box.join(", ")})`);
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
  if (vlmBoxes) params.set("boxes", "1");
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

// -- concepts: "yes, this" / "not this" under each result teach the concept named in the bar -------
// Each mark is stored and refits the concept on the server at once; the page then shows the
// concept's ranking (the search concept:NAME, or the current query when it already uses it), with
// the photos marked so far shown as marked. Marking a photo the same way again takes the mark back.

let marks = new Map();  // photo id -> "yes" | "no": the marks of concept `marksOf`
let marksOf = "";       // the concept those marks are of (lower case); "" none loaded
let concepts = [];      // the index's concepts, as GET api/concepts lists them

function conceptName() {
  return $("#concept").value.trim().replace(/^concept:/i, "").replace(/^"(.*)"$/, "$1").trim();
}

// the query term of a concept: quoted when its name has what the search box would split on
function conceptTerm(name) {
  return /[\s'+]/.test(name) ? `concept:"${name}"` : `concept:${name}`;
}

function markButtons(hit) {
  const box = document.createElement("span");
  box.className = "marks";
  for (const [label, text, words] of [["yes", "✓ yes, this", "yes, this"], ["no", "✗ not this", "not this"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = label;
    button.dataset.mark = label;
    button.textContent = text;
    button.setAttribute("aria-label", `${words}: ${basename(hit.path)}`);
    button.title = `${words}: teaches the concept named in “Teach a concept” (again: takes the mark back)`;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => markHit(hit, label));
    box.append(button);
  }
  return box;
}

function paintMarks() {
  const same = marksOf !== "" && marksOf === conceptName().toLowerCase();
  for (const li of results.children) {
    const card = li.querySelector(".card");
    if (!card) continue;
    const mark = same ? marks.get(Number(card.dataset.id)) : undefined;
    card.classList.toggle("marked-yes", mark === "yes");
    card.classList.toggle("marked-no", mark === "no");
    for (const button of li.querySelectorAll(".marks button")) {
      button.setAttribute("aria-pressed", String(button.dataset.mark === mark));
    }
  }
}

// concept: a concept as the API shows it (with its examples), or null for a name not learned yet
function learnt(concept, name = "") {
  marksOf = (concept ? concept.name : name).toLowerCase();
  marks = new Map((concept ? concept.examples || [] : []).filter((e) => e.id != null).map((e) => [e.id, e.label]));
  $("#concept-info").textContent = concept
    ? `${concept.positives} yes, ${concept.negatives} no` : name ? "new: mark photos “yes, this” to teach it" : "";
  $("#concept-delete").disabled = !concept;
  paintMarks();
}

async function loadConcept() {
  const name = conceptName();
  await refreshConcepts();  // a name not learned yet is not asked for (no 404 in the console)
  if (!name) { learnt(null); return; }
  if (!concepts.some((c) => c.name.toLowerCase() === name.toLowerCase())) { learnt(null, name); return; }
  try {
    learnt(await call(`api/concepts/${encodeURIComponent(name)}`));
  } catch (e) {
    learnt(null, name);
    if (!/^no concept /.test(e.message)) say(e.message, true);
  }
}

async function refreshConcepts() {
  try {
    concepts = (await call("api/concepts")).concepts;
  } catch { return; }
  $("#concept-names").replaceChildren(...concepts.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.label = `${c.positives} yes, ${c.negatives} no`;
    return option;
  }));
}

// the concept's ranking: the current query when it already uses the concept, else concept:NAME
async function rankByConcept(name, note = "") {
  let [q, text] = searchBoxes();
  const lower = q.toLowerCase();
  if (![`concept:${name}`, `concept:"${name}"`].some((t) => lower.includes(t.toLowerCase()))) {
    q = conceptTerm(name);
    $("#q").value = q;
  }
  await search(q, text, note);
}

// after a write to the concept (a mark, an example photo): its marks shown, the picker refreshed,
// and its ranking shown with `what` (what was just done) said before the count
async function relearnt(concept, what) {
  learnt(concept);
  refreshConcepts();
  await rankByConcept(concept.name, `${what} for “${concept.name}” (${concept.positives} yes, ${concept.negatives} no); `);
}

function needConceptName(then) {
  const name = conceptName();
  if (!name) {
    say(`name a concept first (Teach a concept), then ${then}`, true);
    $("#concept").focus();
  }
  return name;
}

async function markHit(hit, label) {
  const name = needConceptName("mark photos “yes, this” or “not this”");
  if (!name) return;
  const undo = marksOf === name.toLowerCase() && marks.get(hit.id) === label;
  const address = `api/concepts/${encodeURIComponent(name)}`;
  say(undo ? "taking the mark back…" : "learning…");
  try {
    const concept = undo
      ? await call(`${address}/photos/${hit.id}`, { method: "DELETE" })
      : await call(`${address}/marks`, { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify({ [label]: [hit.id] }) });
    await relearnt(concept, undo ? `took back the mark of ${basename(hit.path)}`
      : `marked ${basename(hit.path)} “${label === "yes" ? "yes, this" : "not this"}”`);
  } catch (e) { say(e.message, true); }
}

// "Add example photo…": image files from outside the collection as examples (label: "yes" shows
// the concept, "no" does not), one upload each; then the concept's ranking, as after a mark.
async function addExamplePhotos(files, label) {
  if (!files.length) return;
  const name = needConceptName("add example photos");
  if (!name) return;
  let concept = null;
  const added = [];
  try {
    for (const file of files) {
      say(`learning from ${file.name}…`);
      const form = new FormData();
      form.append("file", file, file.name);
      concept = await call(`api/concepts/${encodeURIComponent(name)}/images?${new URLSearchParams({ label })}`,
                           { method: "POST", body: form });
      added.push(file.name);
    }
  } catch (e) {
    if (concept) { learnt(concept); refreshConcepts(); }  // the files before the failing one were added
    const failed = files[added.length].name;
    say(`${failed}: ${String(e.message).split("\n")[0]}`, true);
    return;
  }
  const what = added.length === 1 ? added[0] : `${added.length} photos`;
  try {
    await relearnt(concept, `added ${what} as “${label === "yes" ? "shows it" : "does not show it"}”`);
  } catch (e) { say(e.message, true); }
}

// "Delete concept": the concept and all its examples, after asking
async function deleteConcept() {
  const name = conceptName();
  const known = concepts.find((c) => c.name.toLowerCase() === name.toLowerCase());
  if (!known) {
    say(name ? `no concept “${name}” to delete` : "name the concept to delete in “Teach a concept”", true);
    return;
  }
  const examples = known.positives + known.negatives;
  if (!confirm(`Delete the concept “${known.name}” and its ${examples} example${examples === 1 ? "" : "s"}? This cannot be undone.`)) return;
  try {
    const body = await call(`api/concepts/${encodeURIComponent(known.name)}`, { method: "DELETE" });
    $("#concept").value = "";
    await loadConcept();  // no concept: the marks cleared, the picker refreshed
    const address = new URLSearchParams(location.search);
    address.delete("concept");
    history.replaceState(null, "", `?${address}`);
    say(`deleted the concept “${body.name}”`);
  } catch (e) { say(e.message, true); }
}

$("#concept-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = conceptName();
  if (name) rankByConcept(name);
});
$("#concept").addEventListener("change", async () => {
  await loadConcept();
  if ($("#concept-only").checked) rerun();
});
$("#concept-only").addEventListener("change", rerun);
$("#concept-file").addEventListener("change", async (e) => {
  const files = [...e.target.files];
  e.target.value = "";  // the same file can be chosen again
  await addExamplePhotos(files, $("#concept-file-label").value);
});
$("#concept-delete").addEventListener("click", deleteConcept);

function rerun() {
  const [q, text] = searchBoxes();
  if (q || text) search(q, text);
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
      const [q, text] = searchBoxes();
      search(q || (text ? "" : label), text);
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

// -- the text read in a photo: its lines below the metadata, their boxes drawn over the photo -------
// Text from photos is untrusted: it only ever goes in as textContent, and the boxes' points are
// numbers checked here.

const SVG = "http://www.w3.org/2000/svg";
let textAsked = 0;  // the latest text request: an older answer arriving late is dropped

function linePoints(line) {
  let corners = Array.isArray(line.quad) && line.quad.length === 4 ? line.quad : null;
  if (!corners && Array.isArray(line.box) && line.box.length === 4) {
    const [x0, y0, x1, y1] = line.box;
    corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
  }
  if (!corners) return null;
  const numbers = corners.map((c) => (Array.isArray(c) ? c.slice(0, 2).map(Number) : [NaN, NaN]));
  if (!numbers.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y))) return null;
  return numbers.map(([x, y]) => `${x},${y}`).join(" ");
}

function highlightLine(n) {
  for (const el of document.querySelectorAll("#viewer-boxes polygon, #viewer-text .line")) {
    el.classList.toggle("hot", n !== null && el.dataset.line === String(n));
  }
}

// The part of the photo a hit matched (region search: `region` true, `box` in its pixels), or null
// when the whole photo matched or the numbers are not usable.
function regionOf(hit) {
  if (hit.region !== true || !Array.isArray(hit.box) || hit.box.length !== 4) return null;
  if (!(Number(hit.width) > 0 && Number(hit.height) > 0)) return null;
  const box = hit.box.map(Number);
  return box.every(Number.isFinite) && box[2] > box[0] && box[3] > box[1] ? box : null;
}

function regionPolygon(box) {
  const polygon = document.createElementNS(SVG, "polygon");
  polygon.setAttribute("points", linePoints({ box }));
  polygon.classList.add("region");
  const title = document.createElementNS(SVG, "title");
  title.textContent = "the part that matched";
  polygon.append(title);
  return polygon;
}

// the grid's thumbnails fill a square (object-fit: cover): "slice" fits the photo's pixels the same way
function regionOverlay(hit, box) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "region");
  svg.setAttribute("viewBox", `0 0 ${Number(hit.width)} ${Number(hit.height)}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid slice");
  svg.setAttribute("aria-hidden", "true");
  svg.append(regionPolygon(box));
  return svg;
}

// lines: [{text, score, box, quad}] in the photo's pixels (width x height, after EXIF orientation);
// found: [{box, label}] the boxes a vision-language model gave (ask with boxes, "Find in this photo");
// region: [x0, y0, x1, y1] the part of the photo that matched the search, or null
function drawText(lines, width, height, found = [], region = null) {
  const svg = $("#viewer-boxes");
  const pre = $("#viewer-text");
  svg.replaceChildren();
  pre.replaceChildren();
  const shown = (Array.isArray(lines) ? lines : []).filter((l) => l && typeof l.text === "string");
  $("#viewer-text-section").hidden = !shown.length;
  const w = Number(width), h = Number(height);
  const sized = w > 0 && h > 0;
  if (sized) svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  else svg.removeAttribute("viewBox");
  shown.forEach((line, n) => {
    const span = document.createElement("span");
    span.className = "line";
    span.dataset.line = n;
    span.textContent = line.text;
    if (n) pre.append("\n");
    pre.append(span);
    const points = sized ? linePoints(line) : null;
    if (!points) return;
    const polygon = document.createElementNS(SVG, "polygon");
    polygon.setAttribute("points", points);
    polygon.dataset.line = n;
    const title = document.createElementNS(SVG, "title");
    title.textContent = line.text;
    polygon.append(title);
    svg.append(polygon);
  });
  (Array.isArray(found) ? found : []).forEach((b) => {
    const points = sized && b ? linePoints({ box: b.box }) : null;
    if (!points) return;
    const polygon = document.createElementNS(SVG, "polygon");
    polygon.setAttribute("points", points);
    polygon.classList.add("found");
    const title = document.createElementNS(SVG, "title");
    title.textContent = String(b.label || "");
    polygon.append(title);
    svg.append(polygon);
  });
  if (sized && region) svg.append(regionPolygon(region));
}

async function showText(hit) {
  const known = Array.isArray(hit.ocr);
  drawText(known ? hit.ocr : [], hit.width, hit.height, hit.boxes, regionOf(hit));
  if (known) return;
  // not in the hit (not read when it was found): ask, it may have been read since
  const asked = ++textAsked;
  try {
    const body = await call(`api/images/${hit.id}/text`);
    if (body.read) hit.ocr = body.lines;
    if (asked === textAsked && hits[current] === hit && viewer.open) drawText(body.lines, body.width, body.height, hit.boxes, regionOf(hit));
  } catch { /* no text shown: the photo is gone from the index */ }
}

for (const [area, selector] of [["#viewer-text", ".line"], ["#viewer-boxes", "polygon"]]) {
  $(area).addEventListener("mouseover", (e) => {
    const el = e.target.closest(selector);
    highlightLine(el ? el.dataset.line : null);
  });
  $(area).addEventListener("mouseleave", () => highlightLine(null));
}

function openViewer(i) {
  cancelDrag();
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
  const region = regionOf(hit);
  if (region) {  // where, in words too: the box drawn over the photo
    const [x0, y0, x1, y1] = region.map((v) => Math.round(v));
    const dt = document.createElement("dt");
    dt.textContent = "matched";
    const dd = document.createElement("dd");
    dd.textContent = `a part: x ${x0}–${x1}, y ${y0}–${y1}`;
    dl.append(dt, dd);
  }
  showTags(hit);
  $("#locate-form").hidden = !vlmBoxes;
  if (!viewer.open) viewer.showModal();
  showText(hit);
  $("#more").focus();
}

function closeViewer() {
  if (viewer.open) viewer.close();
}

viewer.addEventListener("close", () => {
  cancelDrag();
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

// -- a part of the photo as the query: drag a rectangle over it ---------------------------------
// Mouse, pen or touch (pointer events). The rectangle stays on the photo as shown (fitted with
// object-fit: contain, as the boxes' SVG is) and goes to the server in the photo's pixels.

const MIN_DRAG = 8;  // CSS pixels each way: less is a click, not a rectangle
const frame = $(".viewer-frame");
const selection = $("#viewer-select");
let drag = null;  // {id, hit, shown, x0, y0, x1, y1} while a rectangle is being dragged

// where the photo (hit.width x hit.height pixels) lies on the screen, and its scale; null unknown
function shownPhoto(hit) {
  const w = Number(hit.width), h = Number(hit.height);
  if (!(w > 0 && h > 0)) return null;
  const img = $("#viewer-img").getBoundingClientRect();
  const scale = Math.min(img.width / w, img.height / h);
  if (!(scale > 0)) return null;
  return { left: img.left + (img.width - w * scale) / 2, top: img.top + (img.height - h * scale) / 2, w, h, scale };
}

function onPhoto(e, shown) {  // the pointer's position, kept on the photo
  return [Math.min(Math.max(e.clientX, shown.left), shown.left + shown.w * shown.scale),
          Math.min(Math.max(e.clientY, shown.top), shown.top + shown.h * shown.scale)];
}

function cancelDrag() {
  drag = null;
  selection.hidden = true;
}

frame.addEventListener("pointerdown", (e) => {
  const hit = hits[current];
  if (!hit || !e.isPrimary || e.button !== 0 || hit.frame_ms != null) return;  // a video frame: no parts
  const shown = shownPhoto(hit);
  if (!shown) return;
  const [x, y] = onPhoto(e, shown);
  if (x !== e.clientX || y !== e.clientY) return;  // on the black bars beside the photo
  e.preventDefault();
  frame.setPointerCapture(e.pointerId);
  drag = { id: e.pointerId, hit, shown, x0: x, y0: y, x1: x, y1: y };
});
frame.addEventListener("pointermove", (e) => {
  if (!drag || e.pointerId !== drag.id) return;
  [drag.x1, drag.y1] = onPhoto(e, drag.shown);
  const f = frame.getBoundingClientRect();
  Object.assign(selection.style, {
    left: `${Math.min(drag.x0, drag.x1) - f.left}px`, top: `${Math.min(drag.y0, drag.y1) - f.top}px`,
    width: `${Math.abs(drag.x1 - drag.x0)}px`, height: `${Math.abs(drag.y1 - drag.y0)}px`,
  });
  selection.hidden = false;
});
frame.addEventListener("pointerup", (e) => {
  if (!drag || e.pointerId !== drag.id) return;
  [drag.x1, drag.y1] = onPhoto(e, drag.shown);
  const { hit, shown, x0, y0, x1, y1 } = drag;
  cancelDrag();
  if (Math.abs(x1 - x0) < MIN_DRAG || Math.abs(y1 - y0) < MIN_DRAG) return;
  const px = (v, start, size) => Math.round(Math.min(size, Math.max(0, (v - start) / shown.scale)));
  const box = [px(Math.min(x0, x1), shown.left, shown.w), px(Math.min(y0, y1), shown.top, shown.h),
               px(Math.max(x0, x1), shown.left, shown.w), px(Math.max(y0, y1), shown.top, shown.h)];
  if (box[2] <= box[0] || box[3] <= box[1]) return;
  current = -1;  // as "More like this": the grid is about to be replaced
  closeViewer();
  similarToRegion(hit, box);
});
frame.addEventListener("pointercancel", cancelDrag);
frame.addEventListener("lostpointercapture", () => { if (drag) cancelDrag(); });

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
  const [q, text] = searchBoxes();
  if (q || text) search(q, text);
});
$("#upload").addEventListener("change", (e) => similarToFile(e.target.files[0]));
// "Find in this photo": the model's boxes for a phrase, drawn over the photo in the viewer
$("#locate-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const hit = hits[current];
  const q = $("#locate").value.trim();
  if (!hit || !q) return;
  say(`looking for “${q}” in ${basename(hit.path)}…`);
  try {
    const body = await call(`api/locate?${new URLSearchParams({ q, id: hit.id })}`);
    hit.boxes = body.boxes;
    if (hits[current] === hit && viewer.open) showText(hit);
    say(`${body.boxes.length} boxes for “${q}” in ${basename(hit.path)}`);
  } catch (err) { say(err.message, true); }
});
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

call("api/status").then(async (status) => {
  $("#ask-form").hidden = !status.vlm;
  vlmBoxes = Boolean(status.vlm_boxes);
  const address = new URLSearchParams(location.search);
  const q = address.get("q") || "", text = address.get("text") || "";
  if (address.get("concept")) $("#concept").value = address.get("concept");
  await loadConcept();  // the concepts for the picker, and the marks of the one named
  if (q || text) { $("#q").value = q; $("#text").value = text; search(q, text); }
  else say(`${status.images} photos in index “${status.index}”, model ${status.model_id}`);
}).catch((e) => say(e.message, true));
