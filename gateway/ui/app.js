// The separation page: sign in, upload, progress over the WebSocket, the result's players, my jobs.
import { ApiError, apiKey, blob, call, getJson, postForm, presignedUpload, saveBlob, setApiKey, websocketUrl } from "./api.js";
import { StemPlayer, clock, decode, drawWaveform, el, transport } from "./player.js";
import { initRoom, loadRoom } from "./room.js";

const $ = (id) => document.getElementById(id);
const PRESIGNED_FROM_BYTES = 8 * 1024 * 1024;  // bigger files go straight to storage where the gateway allows it
let player = null;
let following = null;  // the job whose progress is shown: {id, socket, poll}

// ------------------------------------------------------------------ messages

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
}

function describe(error) { return error instanceof ApiError ? error.message : `Failed: ${error.message}`; }

// ------------------------------------------------------------------ tabs

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    const on = tab.getAttribute("aria-controls") === name;
    tab.setAttribute("aria-current", String(on));
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (name === "jobs") loadJobs();
  if (name === "room") loadRoom();
}

// ------------------------------------------------------------------ sign in

async function checkAccess() {
  const status = $("signin-status");
  try {
    const models = await getJson("/v1/models");
    status.textContent = apiKey() ? "Signed in" : "Open gateway: no key needed";
    signedIn(Boolean(apiKey()));
    fillModels(models);
    return models;
  } catch (e) {
    status.textContent = e.status === 401 ? (apiKey() ? "Key not accepted" : "Sign in with your API key") : describe(e);
    signedIn(false);
    $("signout-button").hidden = !apiKey();
    return null;
  }
}

function signedIn(yes) {  // a key in use: only "Sign out" is offered
  for (const id of ["api-key", "signin-button"]) $(id).hidden = yes;
  document.querySelector("label[for=api-key]").hidden = yes;
  $("signout-button").hidden = !yes;
}

function fillModels(models) {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(el("option", { value: "default" }, "default (chosen for you)"),
    ...Object.keys(models.aliases).map((a) => el("option", { value: a }, `${a} (${models.aliases[a]})`)),
    ...models.models.map((m) => el("option", { value: m.name }, m.ready ? m.name : `${m.name} (not ready)`)));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  loadStems();
}

async function loadStems() {
  const box = $("stems");
  try {
    const meta = await getJson(`/v2/models/${encodeURIComponent($("model").value)}`);
    box.replaceChildren(...meta.outputs.map((o) => el("label", { class: "check" },
      el("input", { type: "checkbox", name: "stem", value: o.name, checked: true }), ` ${o.name}`)));
  } catch (e) {
    box.replaceChildren(el("span", { class: "hint" }, `Stems unknown: ${describe(e)}`));
  }
}

// ------------------------------------------------------------------ submit and follow

async function submit(event) {
  event.preventDefault();
  say("");
  const file = $("file").files[0];
  if (!file) return say("Choose a track first (wav, flac, mp3 or ogg).");
  const stems = [...document.querySelectorAll("#stems input:checked")].map((i) => i.value);
  if (document.querySelector("#stems input") && !stems.length) return say("Choose at least one stem.");
  const form = new FormData();
  form.append("model", $("model").value);
  form.append("output_format", $("format").value);
  if (stems.length && stems.length < document.querySelectorAll("#stems input").length) form.append("stems", stems.join(","));
  stop();
  showProgress("Uploading…", 0);
  $("submit").disabled = true;
  try {
    const uploading = (f) => showProgress(`Uploading ${Math.round(f * 100)} %`, 0);
    const uploadId = file.size >= PRESIGNED_FROM_BYTES ? await presignedUpload(file, uploading) : null;
    if (uploadId) form.append("upload_id", uploadId);
    else form.append("file", file, file.name);
    const job = await postForm("/v1/separations", form, uploading);
    follow(job);
  } catch (e) {
    $("progress-box").hidden = true;
    say(describe(e));
  } finally {
    $("submit").disabled = false;
  }
}

function showProgress(text, fraction) {
  $("progress-box").hidden = false;
  $("progress").value = fraction;
  $("progress-text").textContent = text;
}

function stop() {
  if (following) {
    following.socket && following.socket.close();
    clearInterval(following.poll);
    following = null;
  }
  if (player) { player.destroy(); player = null; }
  $("result").hidden = true;
  $("cancel").hidden = true;
}

function progressText(m) {
  const chunks = m.chunks_total ? ` (${m.chunks_done}/${m.chunks_total} chunks)` : "";
  return `${m.status}${chunks}: ${Math.round((m.progress || 0) * 100)} %`;
}

async function follow(job) {
  stop();
  say("");
  showTab("separate");
  if (job.status === "succeeded") return showResult(job);
  if (["failed", "cancelled", "expired"].includes(job.status)) return finished(job);
  const me = following = { id: job.id, socket: null, poll: null };
  $("cancel").hidden = false;
  showProgress(progressText({ ...job, ...job.progress, progress: job.progress.fraction }), job.progress.fraction);
  queuePlace(me);
  me.poll = setInterval(() => queuePlace(me), 2000);
  try {
    // Browsers cannot put a header on a WebSocket: a one-time ticket goes in its URL instead of the key.
    const ticket = await getJson(`/v1/separations/${job.id}/progress-ticket`, { method: "POST" });
    if (following !== me) return;
    const socket = me.socket = new WebSocket(websocketUrl(ticket.progress_url));
    socket.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (m.error && !m.status) return say(`Progress unavailable: ${m.error.error || m.error}`);
      if (following !== me || m.heartbeat) return;
      if (m.status !== "queued") showProgress(progressText(m), m.progress);
      $("progress").dataset.chunksDone = m.chunks_done;
      if (["succeeded", "failed", "cancelled"].includes(m.status)) done(me);
    };
    socket.onclose = (event) => { if (following === me && event.code !== 1000) pollUntilDone(me); };
  } catch (e) {
    if (following === me) pollUntilDone(me);
  }
}

async function queuePlace(me) {
  try {
    const place = await getJson(`/v1/separations/${me.id}/queue`);
    if (following !== me) return;
    if (place.status === "queued") showProgress(`Queued: position ${place.position} of ${place.queued}`, 0);
    else clearInterval(me.poll);
  } catch { clearInterval(me.poll); }
}

function pollUntilDone(me) {  // the WebSocket is gone: read the job until it ends
  clearInterval(me.poll);
  me.poll = setInterval(async () => {
    try {
      const job = await getJson(`/v1/separations/${me.id}`);
      showProgress(progressText({ ...job, ...job.progress, progress: job.progress.fraction }), job.progress.fraction);
      if (!["queued", "running"].includes(job.status)) done(me);
    } catch (e) { say(describe(e)); clearInterval(me.poll); }
  }, 1000);
}

async function done(me) {
  clearInterval(me.poll);
  const job = await getJson(`/v1/separations/${me.id}`);
  if (following !== me) return;
  following = null;
  $("cancel").hidden = true;
  job.status === "succeeded" ? showResult(job) : finished(job);
}

function finished(job) {
  showProgress(job.status, job.progress.fraction);
  say(job.status === "failed" ? `The separation failed: ${job.error ? job.error.error : "no reason given"}`
    : `The job was ${job.status}.`);
}

async function cancel() {
  if (!following) return;
  try { await call(`/v1/separations/${following.id}`, { method: "DELETE" }); } catch (e) { say(describe(e)); }
}

// ------------------------------------------------------------------ result

function fact(name, value) { return [el("dt", {}, name), el("dd", {}, value)]; }

async function showResult(job) {
  showProgress(`succeeded${job.cached ? " (from the cache)" : ""}`, 1);
  const box = $("result");
  box.hidden = false;
  box.replaceChildren(el("h3", {}, `Result: ${job.filename || job.id}`), el("p", { role: "status" }, "Loading the stems…"));
  const names = Object.keys(job.stems);
  const files = await Promise.all(names.map((n) => blob(job.stems[n])));
  player = new StemPlayer(names.map((n, i) => ({ name: n, url: URL.createObjectURL(files[i]) })));
  const ext = job.stems && files[0] && files[0].type.includes("flac") ? "flac" : "wav";
  const rows = names.map((name, i) => {
    const canvas = el("canvas", { class: "wave", role: "img", "aria-label": `${name} waveform` });
    const head = el("div", { class: "playhead" });
    const wave = el("div", { class: "wave-box" }, canvas, head);
    wave.addEventListener("click", (e) => player.seek(e.offsetX / wave.clientWidth * player.duration()));
    files[i].arrayBuffer().then(decode).then((ch) => drawWaveform(canvas, ch)).catch(() => canvas.setAttribute("aria-label", `${name}: no waveform`));
    const download = el("button", { type: "button", "data-role": "download-stem", "data-stem": name,
      onclick: () => saveBlob(files[i], `${name}.${ext}`) }, `Download ${name}`);
    return el("div", { class: "stem", "data-stem": name }, el("span", { class: "stem-name" }, name),
      ...player.mixer.buttons(name), wave, download, player.audios.get(name));
  });
  player.onTick = (t, d) => { for (const h of box.querySelectorAll(".playhead")) h.style.left = `${d ? t / d * 100 : 0}%`; };
  const zip = el("button", { type: "button", id: "download-zip",
    onclick: async () => { try { saveBlob(await blob(job.zip_url), `${job.id}.zip`); } catch (e) { say(describe(e)); } } },
    "Download all (zip)");
  const facts = el("dl", { class: "facts" },
    fact("Model", `${job.model} ${job.model_version || ""}`),
    fact("Quality estimate", job.quality_score == null ? "n/a" : `${job.quality_score.toFixed(2)} (0–1, no reference)`),
    fact("Cost", job.cost_usd == null ? "n/a" : `$${job.cost_usd.toFixed(6)}`),
    fact("Audio", job.audio_seconds == null ? "n/a" : `${clock(job.audio_seconds)} (${job.compute_seconds ?? "?"} s compute)`),
    ...(job.warnings.length ? fact("Warnings", job.warnings.join("; ")) : []));
  box.replaceChildren(el("h3", {}, `Result: ${job.filename || job.id}`), facts, transport(player, "stems"), ...rows, zip);
}

// ------------------------------------------------------------------ my jobs

async function loadJobs() {
  const body = $("jobs-table").querySelector("tbody");
  $("jobs-status").textContent = "Loading…";
  try {
    const list = await getJson("/v1/separations?limit=50");
    body.replaceChildren(...list.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", {}, j.filename || j.id), el("td", {}, `${j.model} ${j.model_version || ""}`), el("td", {}, j.status),
      el("td", {}, j.quality_score == null ? "" : j.quality_score.toFixed(2)),
      el("td", {}, new Date(j.created * 1000).toLocaleString()),
      el("td", {}, el("button", { type: "button", onclick: () => follow(j), "aria-label": `Open ${j.filename || j.id}` }, "Open")))));
    const n = list.jobs.length;
    $("jobs-status").textContent = n ? `${n} job${n === 1 ? "" : "s"}` : "No jobs yet";
  } catch (e) {
    body.replaceChildren();
    $("jobs-status").textContent = describe(e);
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.getAttribute("aria-controls")));
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    checkAccess();
  });
  $("signout-button").addEventListener("click", () => { setApiKey(""); stop(); checkAccess(); });
  $("model").addEventListener("change", loadStems);
  $("upload-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("jobs-refresh").addEventListener("click", loadJobs);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { $("file").files = e.dataTransfer.files; $("file").dispatchEvent(new Event("change")); }
  });
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    $("drop-text").textContent = f ? `${f.name} (${(f.size / 1024 / 1024).toFixed(1)} MiB)` : "Drop a track here, or choose a file";
  });
  initRoom();
  checkAccess();
}

wire();
