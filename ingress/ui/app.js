// The page's only script: sends the chosen, dropped or linked image to POST /v1/classify (the
// public API) and shows the answer: top classes as bars, the model, per-tier timings as a stacked
// bar, or the error's code and message.
"use strict";

const TOP_K = 5;
const TIERS = [
  ["request_queue_ms", "request queue", "t1"],
  ["download_ms", "download", "t2"],
  ["preprocess_ms", "preprocess", "t3"],
  ["tensor_queue_ms", "tensor queue", "t4"],
  ["inference_ms", "inference", "t5"],
];

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

const percent = (p) => `${(p * 100).toFixed(1)}%`;
const ms = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`;

function showBusy(previewSrc) {
  $("output").hidden = false;
  const img = $("preview");
  if (previewSrc) img.src = previewSrc; else img.removeAttribute("src");
  $("status").replaceChildren(el("p", { class: "busy" }, "Classifying…"));
  $("output").setAttribute("aria-busy", "true");
}

function showResult(body) {
  const top = el("ol", { class: "top", "aria-label": "Most likely classes" });
  for (const { label, probability } of body.top) {
    const bar = el("span");
    bar.style.width = percent(probability);
    top.append(el("li", { "data-label": label },
      el("div", { class: "label" }, el("span", { class: "name" }, label),
        el("span", { class: "prob" }, percent(probability))),
      el("div", { class: "bar", role: "presentation" }, bar)));
  }
  const t = body.timings;
  const stack = el("div", { class: "timings", role: "img",
    "aria-label": TIERS.filter(([k]) => t[k] != null).map(([k, name]) => `${name} ${ms(t[k])}`).join(", ") });
  const legend = el("ul", { class: "legend" });
  for (const [key, name, cls] of TIERS) {
    if (t[key] == null) continue;
    const part = el("span", { class: cls, title: `${name}: ${ms(t[key])}` });
    part.style.flexGrow = String(t[key]);
    stack.append(part);
    legend.append(el("li", {}, el("i", { class: cls }), `${name} ${ms(t[key])}`));
  }
  $("status").replaceChildren(
    top,
    el("p", { class: "meta", id: "model" }, `${body.model.name} ${body.model.version}`),
    el("p", { class: "meta" }, `${ms(t.total_ms)} in all, by tier:`),
    stack, legend);
  $("output").removeAttribute("aria-busy");
}

function showError(code, message) {
  $("status").replaceChildren(el("div", { class: "error", role: "alert" },
    el("code", {}, code), ": ", message));
  $("output").removeAttribute("aria-busy");
}

async function classify(body, contentType, previewSrc) {
  showBusy(previewSrc);
  try {
    const res = await fetch(`/v1/classify?top_k=${TOP_K}`, {
      method: "POST", headers: { "Content-Type": contentType }, body,
    });
    const json = await res.json().catch(() => null);
    if (res.ok && json && json.top) showResult(json);
    else if (json && json.error) showError(json.error.code, json.error.message);
    else showError(`http_${res.status}`, `the server answered ${res.status} ${res.statusText}`);
  } catch (e) {
    showError("network", `could not reach the server (${e.message})`);
  }
}

function classifyFile(file) {
  if (!file) return;
  const type = file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream";
  classify(file, type, URL.createObjectURL(file));
}

$("file").addEventListener("change", (e) => classifyFile(e.target.files[0]));

const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  classifyFile(e.dataTransfer.files[0]);
});
$("url-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const url = $("url").value.trim();
  classify(JSON.stringify({ url }), "application/json", url);
});
