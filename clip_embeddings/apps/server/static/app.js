// The search page: no framework, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const K = 24;

function token() { return localStorage.getItem("clip-embeddings-token") || ""; }

// Every call carries the bearer token when one is set; a 401 asks for it once and retries.
async function call(path, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, init, { headers }));
  if (response.status === 401) {
    const given = prompt("This server needs an access token:");
    if (given) {
      localStorage.setItem("clip-embeddings-token", given);
      return call(path, init);
    }
  }
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(reason);
  }
  return response;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

let lastFile = null;  // the image last dropped or chosen: a compound query's img:0 (or img:<its name>)

function minScore() {
  const value = $("min-score").value.trim();
  return value === "" ? null : Number(value);
}

async function search(body, what, route = "search") {
  status("searching " + what + "…");
  const floor = minScore();
  if (floor !== null) {
    if (body instanceof FormData) body.append("min_score", String(floor));
    else body.min_score = floor;
  }
  try {
    const init = body instanceof FormData
      ? { method: "POST", body }
      : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
    const result = await (await call(route, init)).json();
    show(result.hits);
    status(result.hits.length + " result(s) for " + what);
  } catch (e) {
    status(e.message, true);
  }
}

function show(hits) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of hits) {
    const figure = document.createElement("figure");
    figure.dataset.id = hit.id;
    figure.title = hit.document || hit.name || hit.id;
    const img = document.createElement("img");
    img.alt = hit.name || hit.id;
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.name || "";
    const more = document.createElement("button");
    more.className = "more";
    more.type = "button";
    more.textContent = "≈";
    more.title = "more like this (never this one itself)";
    more.addEventListener("click", (event) => {
      event.stopPropagation();
      search({ more_like: hit.id, k: K }, "more like " + (hit.name || hit.id), "query");
    });
    caption.append(score, name, more);
    figure.append(img, caption);
    figure.addEventListener("click", () => search({ item: hit.id, k: K }, "image " + (hit.name || hit.id)));
    grid.append(figure);
    if (hit.thumbnail) thumbnail(img, hit.thumbnail);
  }
}

// Fetched, not <img src>: an <img> cannot send the Authorization header.
async function thumbnail(img, url) {
  try {
    const blob = await (await call(url)).blob();
    img.src = URL.createObjectURL(blob);
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  } catch (e) {
    img.alt = "thumbnail unavailable: " + e.message;
  }
}

function searchFile(file) {
  lastFile = file;
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", String(K));
  search(form, "image " + file.name);
}

$("query").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text) search({ text, k: K }, JSON.stringify(text));
});

$("compound").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("terms").value.trim();
  if (!query) return;
  const form = new FormData();
  form.append("query", query);
  form.append("k", String(K));
  if (lastFile && /\bimg:|\bimage:/.test(query)) form.append("image", lastFile, lastFile.name);
  search(form, query, "query");
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) searchFile(file);
});
$("file").addEventListener("change", () => { if ($("file").files[0]) searchFile($("file").files[0]); });

call("health").then((r) => r.json()).then((h) => {
  const model = h.model || "";  // absent when /health is asked without the token
  $("collection").textContent = h.collection
    ? h.collection.name + " · " + h.collection.count + " record(s) · " + model
    : model + " (no collection)";
}).catch((e) => status(e.message, true));
