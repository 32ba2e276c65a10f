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

async function search(body, what) {
  status("searching " + what + "…");
  try {
    const init = body instanceof FormData
      ? { method: "POST", body }
      : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
    const result = await (await call("search", init)).json();
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
    caption.append(score, name);
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
