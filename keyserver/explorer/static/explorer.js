// The release-log explorer: fetches a tenant's log with an auditor token (held in memory, sent only as
// an Authorization header, never put in a URL or in storage), verifies the checkpoint's signature and
// every shown entry's inclusion proof in the browser, checks consistency between the checkpoints it has
// seen, and draws what the log says.
"use strict";

import { leafHash, verifyInclusion, verifyConsistency, equalBytes } from "./merkle.js";
import { b64decode, fromHex, hex, parseVerifierKey, verifyCheckpoint } from "./note.js";

const PAGE = 1000;
const MAX_SHOWN = 500;
const $ = (id) => document.getElementById(id);
const tenant = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const base = `/v1/tenants/${encodeURIComponent(tenant)}/log`;

let token = "";
let verifier = null;
let head = null;
const seen = []; // checkpoints seen, oldest first: {size, root, consistent}
let entries = []; // {index, data, entry, leaf, status, problem}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, expect = "json") {
  const headers = { Accept: "application/json, application/problem+json, text/plain" };
  if (token) headers.Authorization = `Bearer ${token}`; // none: a log the operator made public
  const response = await fetch(base + path, {
    headers,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (response.status === 401 && !token) throw new Error("This log is not public: paste an auditor token.");
  if (!response.ok) {
    let detail = `${response.status}`;
    try {
      const problem = await response.json();
      detail = `${response.status} ${problem.title || ""}: ${problem.detail || ""}`;
    } catch (_) { /* not a problem document */ }
    throw new Error(detail);
  }
  return expect === "text" ? response.text() : response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

async function fetchCheckpoint() {
  const checkpoint = await verifyCheckpoint(await api("/checkpoint", "text"), verifier);
  const previous = seen[seen.length - 1];
  let consistency = "first seen";
  if (previous) {
    if (checkpoint.size === previous.size && equalBytes(checkpoint.root, previous.root)) return previous.checkpoint;
    const proof = await api(`/proofs/consistency?first=${previous.size}&second=${checkpoint.size}`);
    try {
      await verifyConsistency(previous.size, checkpoint.size, previous.root, checkpoint.root, proof.proof.map(fromHex));
      consistency = `consistent with size ${previous.size}`;
    } catch (error) {
      consistency = `NOT consistent with size ${previous.size}: ${error.message}`;
    }
  }
  seen.push({ size: checkpoint.size, root: checkpoint.root, consistency, checkpoint });
  return checkpoint;
}

async function load() {
  token = $("token").value.trim();
  $("token").value = "";
  document.body.dataset.state = "loading";
  setStatus("Fetching the log's key and checkpoint…");
  const pinned = $("vkey").value.trim();
  const key = await api("/key");
  if (pinned && pinned !== key.verifier_key) throw new Error("the log's key is not the pinned verifier key");
  verifier = await parseVerifierKey(pinned || key.verifier_key);
  await refresh();
  $("refresh").disabled = false;
}

async function refresh() {
  document.body.dataset.state = "loading";
  head = await fetchCheckpoint();
  renderCheckpoint();
  setStatus(`Reading ${head.size} entries…`);
  entries = [];
  for (let start = 0; start < head.size; start += PAGE) {
    const page = await api(`/entries?start=${start}&end=${Math.min(start + PAGE, head.size)}`);
    for (const item of page.entries) entries.push(decode(item));
  }
  fillFilters();
  await render();
}

function decode(item) {
  const data = b64decode(item.data);
  let entry = null;
  let problem = "";
  try {
    entry = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data));
  } catch (_) {
    problem = "the entry's bytes are not JSON";
  }
  if (entry && JSON.stringify(entry) !== JSON.stringify(item.entry)) problem = "the decoded entry differs from its bytes";
  return { index: item.index, data, entry: entry || item.entry || {}, leaf: null, status: "unchecked", problem };
}

function renderCheckpoint() {
  $("checkpoint-panel").hidden = false;
  $("filters-panel").hidden = false;
  const cosigned = head.cosignatures.length
    ? head.cosignatures.map((c) => `${c.name} (key id ${c.keyId}; not verified: no witness key pinned)`).join("; ")
    : "none (no witnesses configured)";
  const rows = [
    ["Origin", head.origin],
    ["Tree size", head.size],
    ["Root hash", hex(head.root)],
    ["Log signature", "verified ✓ (Ed25519, WebCrypto)"],
    ["Verifier key", `${verifier.name}+${hex(verifier.keyId)}+…`],
    ["Cosignatures", cosigned],
  ];
  $("checkpoint").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("history").replaceChildren(
    ...seen.map((s) => el("li", { class: s.consistency.startsWith("NOT") ? "bad" : "" }, `size ${s.size}, root ${hex(s.root).slice(0, 16)}… — ${s.consistency}`)),
  );
}

function subject(entry) {
  for (const member of ["key", "policy", "reference_values", "anchor"]) {
    const value = entry[member];
    if (value && typeof value === "object" && "name" in value) {
      return value.version != null ? `${value.name}@${value.version}` : String(value.name);
    }
  }
  const token = entry.token;
  if (token && typeof token === "object" && typeof token.role === "string") return `${token.role} ${String(token.id ?? "").slice(0, 8)}`;
  for (const member of ["scope", "ak_name", "name", "signer"]) if (typeof entry[member] === "string") return entry[member];
  if (typeof entry.ek_sha256 === "string") return `EK ${entry.ek_sha256.slice(0, 16)}`;
  return "";
}

function fillFilters() {
  const options = (id, values) => {
    const select = $(id);
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "any"), ...[...values].sort().map((v) => el("option", { value: v }, v)));
    select.value = current;
  };
  options("f-key", new Set(entries.filter((e) => e.entry.key).map((e) => e.entry.key.name)));
  options("f-reason", new Set(entries.filter((e) => e.entry.reason).map((e) => e.entry.reason)));
  options("f-kind", new Set(entries.map((e) => e.entry.kind).filter(Boolean)));
}

function selected() {
  const key = $("f-key").value;
  const decision = $("f-decision").value;
  const reason = $("f-reason").value;
  const kind = $("f-kind").value;
  const since = $("f-since").value ? new Date($("f-since").value + "Z") : null;
  const until = $("f-until").value ? new Date($("f-until").value + "Z") : null;
  const text = $("f-text").value.trim().toLowerCase();
  return entries.filter(({ entry }) => {
    const when = new Date(entry.time);
    return (
      (!key || (entry.key && entry.key.name === key)) &&
      (!decision || entry.decision === decision) &&
      (!reason || entry.reason === reason) &&
      (!kind || entry.kind === kind) &&
      (!since || when >= since) &&
      (!until || when < until) &&
      (!text || JSON.stringify(entry).toLowerCase().includes(text))
    );
  });
}

async function verifyEntry(item) {
  if (item.status !== "unchecked") return;
  try {
    if (item.problem) throw new Error(item.problem);
    item.leaf = await leafHash(item.data);
    const proof = await api(`/proofs/inclusion?index=${item.index}&tree_size=${head.size}`);
    await verifyInclusion(item.leaf, item.index, head.size, proof.audit_path.map(fromHex), head.root);
    item.status = "ok";
  } catch (error) {
    item.status = "bad";
    item.problem = error.message;
  }
}

let generation = 0;

async function render() {
  const mine = ++generation; // a newer render (filters changed meanwhile) supersedes this one
  document.body.dataset.state = "verifying";
  const shown = selected().slice(-MAX_SHOWN).reverse();
  setStatus(`Verifying ${shown.length} entries against the checkpoint…`);
  for (const item of shown) await verifyEntry(item);
  if (mine !== generation) return;
  const rows = shown.map((item) => {
    const e = item.entry;
    const proof = item.status === "ok" ? el("span", { class: "ok" }, "✓ verified") : el("span", { class: "bad" }, `✗ ${item.problem}`);
    const row = el(
      "tr",
      { "data-index": item.index, "data-status": item.status, class: item.status === "bad" ? "tampered" : "" },
      el("td", {}, item.index),
      el("td", {}, String(e.time || "").slice(0, 19).replace("T", " ")),
      el("td", {}, e.kind),
      el("td", {}, subject(e)),
      el("td", { class: e.decision || "" }, e.decision || ""),
      el("td", {}, e.reason || ""),
      el("td", {}, proof),
    );
    row.addEventListener("click", () => showDetail(item));
    return row;
  });
  $("entries").tBodies[0].replaceChildren(...rows);
  const bad = shown.filter((i) => i.status === "bad").length;
  $("verify-summary").className = bad ? "bad" : "ok";
  $("verify-summary").textContent = bad
    ? `${bad} of ${shown.length} shown entries are NOT in the signed checkpoint: this copy of the log was altered.`
    : `All ${shown.length} shown entries are in the signed checkpoint of size ${head.size}.`;
  plotTime(selected());
  plotReasons(selected());
  setStatus(bad ? "Verification failed for some entries." : `Checkpoint of size ${head.size} verified.`, bad > 0);
  document.body.dataset.state = "ready";
}

function showDetail(item) {
  $("detail").hidden = false;
  $("detail").textContent = `entry ${item.index}, leaf hash ${item.leaf ? hex(item.leaf) : "?"}\n` + JSON.stringify(item.entry, null, 2);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function plotTime(items) {
  const releases = items.filter((i) => i.entry.kind === "key-release" && i.entry.time);
  const plot = $("plot-time");
  plot.replaceChildren();
  if (!releases.length) return plot.append(svg("text", { x: 20, y: 100 }, "no releases match"));
  const times = releases.map((i) => Date.parse(i.entry.time));
  const first = Math.min(...times);
  const span = Math.max(...times) - first;
  const step = span <= 2 * 3600e3 ? 60e3 : span <= 2 * 86400e3 ? 3600e3 : 86400e3;
  const origin = Math.floor(first / step) * step;
  const count = Math.min(Math.floor((Math.max(...times) - origin) / step) + 1, 120);
  const buckets = Array.from({ length: count }, () => ({ granted: 0, denied: 0 }));
  releases.forEach((item, n) => {
    const bucket = Math.min(Math.floor((times[n] - origin) / step), count - 1);
    if (item.entry.decision === "granted" || item.entry.decision === "denied") buckets[bucket][item.entry.decision]++;
  });
  const top = Math.max(1, ...buckets.map((b) => b.granted + b.denied));
  const width = 580 / count;
  plot.append(svg("line", { x1: 40, y1: 170, x2: 630, y2: 170, class: "axis" }));
  plot.append(svg("text", { x: 4, y: 24 }, String(top)), svg("text", { x: 4, y: 170 }, "0"));
  buckets.forEach((b, n) => {
    const x = 45 + n * width;
    const hg = (b.granted / top) * 150;
    const hd = (b.denied / top) * 150;
    plot.append(svg("rect", { x, y: 170 - hg, width: Math.max(width - 2, 1), height: hg, class: "bar-granted" }));
    plot.append(svg("rect", { x, y: 170 - hg - hd, width: Math.max(width - 2, 1), height: hd, class: "bar-denied" }));
  });
  const label = (t) => new Date(t).toISOString().slice(0, step >= 86400e3 ? 10 : 16).replace("T", " ");
  plot.append(svg("text", { x: 45, y: 188 }, label(origin)), svg("text", { x: 470, y: 188 }, label(origin + (count - 1) * step)));
  plot.append(svg("text", { x: 300, y: 198 }, `■ granted  ■ denied  (per ${step === 60e3 ? "minute" : step === 3600e3 ? "hour" : "day"})`));
}

function plotReasons(items) {
  const counts = new Map();
  for (const item of items) if (item.entry.decision === "denied") counts.set(item.entry.reason, (counts.get(item.entry.reason) || 0) + 1);
  const plot = $("plot-reasons");
  plot.replaceChildren();
  const rows = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 8);
  if (!rows.length) return plot.append(svg("text", { x: 20, y: 100 }, "no denials match"));
  const top = rows[0][1];
  plot.setAttribute("viewBox", `0 0 420 ${Math.max(60, 20 + rows.length * 23)}`);
  rows.forEach(([reason, n], i) => {
    const y = 10 + i * 23;
    plot.append(svg("text", { x: 4, y: y + 13 }, reason));
    plot.append(svg("rect", { x: 200, y, width: (n / top) * 180, height: 16, class: "bar-denied" }));
    plot.append(svg("text", { x: 205 + (n / top) * 180, y: y + 13 }, String(n)));
  });
}

function guard(action) {
  return (event) => {
    if (event) event.preventDefault();
    action().catch((error) => {
      document.body.dataset.state = "error";
      setStatus(error.message, true);
    });
  };
}

$("tenant-name").textContent = tenant ? `— ${tenant}` : "";
$("login").addEventListener("submit", guard(load));
$("refresh").addEventListener("click", guard(refresh));
for (const id of ["f-key", "f-decision", "f-reason", "f-kind", "f-since", "f-until", "f-text"]) {
  $(id).addEventListener("change", guard(render));
}
