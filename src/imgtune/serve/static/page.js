// The page at /: pick an adapter, give it an image, see its top labels. It calls the same HTTP API as
// any client (GET v1/adapters, POST v1/classify); URLs are relative so the page also works behind a
// proxy that serves the server under a path prefix.
"use strict";

const SHOWN = 200; // rows drawn at once: with hundreds of adapters, typing narrows the list faster than scrolling
const $ = (id) => document.getElementById(id);
let adapters = [];
let selected = "";
let image = null; // the Blob last dropped, pasted or chosen
let ticket = 0; // answers that arrive after a newer request was sent are dropped

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // text, never HTML: labels and names come from run folders
  return node;
}

function problem(response, body) {
  const detail = body && body.detail;
  let text = typeof detail === "string" ? detail : response.statusText;
  if (Array.isArray(detail)) {
    // FastAPI's validation errors, e.g. top_k out of range
    text = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  const retry = response.headers.get("Retry-After");
  return `${response.status}: ${text}${retry ? ` (retry in ${retry} s)` : ""}`;
}

async function call(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // not JSON: a 500 is plain text, a proxy's error page is HTML
  }
  if (!response.ok) throw new Error(problem(response, body));
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function stateOf(adapter) {
  if (adapter.last_error) return ["failed", `failed: ${adapter.last_error}`];
  if (adapter.resident) return ["resident", "resident"];
  return ["cold", adapter.loads ? "unloaded" : "not loaded"];
}

function row(adapter) {
  const button = element("button");
  button.type = "button";
  button.dataset.name = adapter.name;
  button.setAttribute("aria-pressed", String(adapter.name === selected));
  const [kind, text] = stateOf(adapter);
  const state = element("span", `state ${kind}`, text);
  state.title = `${adapter.loads} load${adapter.loads === 1 ? "" : "s"}`;
  const about = element("span", "about", `${adapter.method}, ${adapter.num_labels} labels`);
  button.append(element("span", "name", adapter.name), about, state);
  button.addEventListener("click", () => pick(adapter.name));
  const item = element("li");
  item.append(button);
  return item;
}

function drawList() {
  const words = $("adapter").value.trim().toLowerCase();
  const matching = adapters.filter((a) => a.name.toLowerCase().includes(words) || a.name === selected);
  $("adapters").replaceChildren(...matching.slice(0, SHOWN).map(row));
  const hidden = matching.length - Math.min(matching.length, SHOWN);
  $("more").textContent = hidden ? `${hidden} more: type to narrow the list` : "";
}

async function loadAdapters() {
  try {
    const listing = await call("v1/adapters");
    adapters = listing.adapters;
    $("base").textContent = `base model ${listing.base}`;
    const resident = adapters.filter((a) => a.resident).length;
    const cap = listing.max_resident ? ` (at most ${listing.max_resident})` : "";
    $("counts").textContent = `${adapters.length} adapters, ${resident} resident${cap}`;
    $("adapter-names").replaceChildren(...adapters.map((a) => Object.assign(element("option"), { value: a.name })));
    if (!selected && adapters.length === 1) choose(adapters[0].name);
    drawList();
  } catch (err) {
    showError(`cannot list the adapters: ${err.message}`);
  }
}

function choose(name) {
  selected = name;
  $("chosen").textContent = `Adapter: ${name}`;
}

function pick(name) {
  choose(name); // the search box keeps what was typed: the list stays as the person narrowed it
  drawList();
  classify();
}

function setImage(blob) {
  if (!blob) return;
  image = blob;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  classify();
}

function drawBars(answer, milliseconds) {
  const bars = answer.predictions.map((p) => {
    const item = element("li");
    item.dataset.label = p.label;
    item.dataset.score = String(p.score);
    const fill = element("div", "fill");
    fill.style.width = `${p.score * 100}%`;
    const bar = element("div", "bar");
    bar.append(fill);
    item.append(element("span", "label", p.label), bar, element("span", "pct", `${(p.score * 100).toFixed(1)}%`));
    item.title = `${p.label}: ${p.score}`;
    return item;
  });
  $("bars").replaceChildren(...bars);
  $("bars").dataset.adapter = answer.adapter;
  $("latency").textContent = `${answer.adapter} answered in ${Math.round(milliseconds)} ms (round trip from this browser)`;
}

async function classify() {
  if (!image) return;
  if (!selected) {
    showError("pick an adapter first");
    return;
  }
  const mine = ++ticket;
  const form = new FormData();
  form.append("file", image, image.name || "pasted-image");
  const topK = $("top-k").value || "5";
  const url = `v1/classify?adapter=${encodeURIComponent(selected)}&top_k=${encodeURIComponent(topK)}`;
  const started = performance.now();
  document.body.classList.add("busy");
  try {
    const answer = await call(url, { method: "POST", body: form });
    if (mine !== ticket) return;
    showError("");
    drawBars(answer, performance.now() - started);
  } catch (err) {
    if (mine !== ticket) return;
    $("bars").replaceChildren();
    $("latency").textContent = "";
    showError(err.message);
  } finally {
    if (mine === ticket) document.body.classList.remove("busy");
  }
  loadAdapters(); // a first request loads its adapter, and may unload another: show it
}

function firstImage(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

function listen() {
  const search = $("adapter");
  search.addEventListener("input", () => {
    const typed = search.value.trim();
    if (adapters.some((a) => a.name === typed)) pick(typed);
    else drawList();
  });
  search.addEventListener("keydown", (event) => {
    const first = $("adapters").querySelector("button");
    if (event.key === "Enter" && first) pick(first.dataset.name);
  });
  $("file").addEventListener("change", () => setImage($("file").files[0]));
  $("top-k").addEventListener("change", classify);
  // the whole page takes a drop: a file that misses the zone would otherwise replace the page
  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over"); // left the window, not just a child element
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const pasted = firstImage(event.clipboardData && event.clipboardData.items);
    if (!pasted) return; // text pasted into the search box stays text
    event.preventDefault();
    setImage(pasted);
  });
}

listen();
loadAdapters();
