// The listening room: one track separated by a rollout's stable (A) and canary (B) through the v2
// pass-through pinned to each version; both play from one clock, switching A/B at the same moment.
import { ApiError, call, getJson } from "./api.js";
import { Mixer, el, transport } from "./player.js";

const $ = (id) => document.getElementById(id);
const CAP_DB = 100;  // as the gateway's shadow agreement: identical (or both silent) stems score the cap
const SILENCE_DBFS = -80;
let rollouts = [];
let room = null;

/** A v2 request holding the encoded file as one BYTES element (binary tensor extension). */
function v2Request(encoded) {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: "audio", shape: [1], datatype: "BYTES", parameters: { binary_data_size: encoded.byteLength + 4 } }],
    parameters: { output_format: "fp32", binary_data_output: true },
  }));
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, encoded.byteLength, true);
  return { body: new Blob([header, length, encoded]), headerLength: header.byteLength };
}

/** {parameters, stems: {name: [Float32Array per channel]}} from a binary v2 answer. */
function v2Response(buffer, headerLength) {
  const doc = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 0, headerLength)));
  let offset = headerLength;
  const stems = {};
  for (const out of doc.outputs) {
    const size = out.parameters.binary_data_size;
    const data = new Float32Array(buffer.slice(offset, offset + size));
    offset += size;
    const [channels, samples] = out.shape;
    stems[out.name] = Array.from({ length: channels }, (_, c) => data.subarray(c * samples, (c + 1) * samples));
  }
  return { parameters: doc.parameters || {}, stems };
}

/** SDR (dB) of the canary's stem with the stable's as the reference, within 0..100. */
export function agreementDb(stable, canary) {
  let ref = 0, err = 0, est = 0, n = 0;
  for (let c = 0; c < stable.length; c++) {
    const a = stable[c], b = canary[c];
    for (let i = 0; i < a.length; i++) { ref += a[i] * a[i]; est += b[i] * b[i]; const d = a[i] - b[i]; err += d * d; }
    n += a.length;
  }
  const dbfs = (energy) => 10 * Math.log10(energy / Math.max(n, 1) + 1e-20);
  if ((dbfs(ref) < SILENCE_DBFS && dbfs(est) < SILENCE_DBFS) || err === 0) return CAP_DB;
  const sdr = 10 * Math.log10((ref + 1e-12) / (err + 1e-12));
  return Math.min(CAP_DB, Math.max(0, sdr));
}

async function separate(model, version, file) {
  const { body, headerLength } = v2Request(await file.arrayBuffer());
  const response = await call(`/v2/models/${encodeURIComponent(model)}/versions/${encodeURIComponent(version)}/infer`, {
    method: "POST", body, headers: { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(headerLength) },
  });
  const length = Number(response.headers.get("Inference-Header-Content-Length"));
  return v2Response(await response.arrayBuffer(), length);
}

async function sha256(file) {
  if (!crypto.subtle) return null;  // only in a secure context (https, or this machine)
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Both versions' stems on one AudioContext clock; the arm not heard is at gain 0. */
class AbPlayer {
  constructor(arms, names, rate) {  // arms: {A: stems, B: stems}
    this.ctx = new AudioContext({ sampleRate: rate });
    this.arm = "A";
    this.playing = false;
    this.offset = 0;
    this.mixer = new Mixer(names, () => this.apply());
    this.armGain = {};
    this.stemGain = {};
    this.buffers = {};
    for (const [arm, stems] of Object.entries(arms)) {
      this.armGain[arm] = this.ctx.createGain();
      this.armGain[arm].gain.value = arm === this.arm ? 1 : 0;
      this.armGain[arm].connect(this.ctx.destination);
      for (const name of names) {
        const channels = stems[name];
        const buffer = this.ctx.createBuffer(channels.length, channels[0].length, rate);
        channels.forEach((ch, c) => buffer.copyToChannel(ch, c));
        this.buffers[`${arm}/${name}`] = buffer;
        const gain = this.ctx.createGain();
        gain.connect(this.armGain[arm]);
        this.stemGain[`${arm}/${name}`] = gain;
      }
    }
    this.length = Math.max(...Object.values(this.buffers).map((b) => b.duration));
    this.sources = [];
  }
  duration() { return this.length; }
  position() { return this.playing ? Math.min(this.length, this.ctx.currentTime - this.startedAt) : this.offset; }
  apply() { for (const [key, g] of Object.entries(this.stemGain)) g.gain.value = this.mixer.audible(key.split("/")[1]) ? 1 : 0; }
  async play() {
    await this.ctx.resume();
    if (this.offset >= this.length - 0.05) this.offset = 0;
    const at = this.ctx.currentTime + 0.05;  // every source starts on the same sample
    this.sources = Object.entries(this.buffers).map(([key, buffer]) => {
      const s = this.ctx.createBufferSource();
      s.buffer = buffer;
      s.connect(this.stemGain[key]);
      s.start(at, this.offset);
      return s;
    });
    this.sources[0].onended = () => { if (this.playing && this.position() >= this.length - 0.1) this.pause(0); };
    this.startedAt = at - this.offset;
    this.playing = true;
  }
  pause(to) {
    const t = to ?? this.position();
    for (const s of this.sources) { s.onended = null; try { s.stop(); } catch { /* not started */ } }
    this.sources = [];
    this.playing = false;
    this.offset = t;
  }
  seek(t) { const was = this.playing; this.pause(t); if (was) this.play(); }
  switchTo(arm) {  // a 10 ms crossfade: no click, same position
    const now = this.ctx.currentTime;
    for (const [name, g] of Object.entries(this.armGain)) g.gain.setTargetAtTime(name === arm ? 1 : 0, now, 0.01);
    this.arm = arm;
  }
  destroy() { this.pause(); this.ctx.close(); }
}

function quality(p) { return p.quality_score == null ? null : Number(p.quality_score); }

async function compare(event) {
  event.preventDefault();
  const message = $("room-message");
  message.hidden = true;
  const rollout = rollouts.find((r) => r.name === $("room-model").value);
  const file = $("room-file").files[0];
  if (!rollout) return showError("No rollout is under way: there is no canary to compare.");
  if (!file) return showError("Choose a track first.");
  if (room) { room.player.destroy(); room = null; }
  const { stable_version: stable, canary_version: canary } = rollout.rollout;
  $("room-status").textContent = `Separating with ${stable} (A) and ${canary} (B)…`;
  $("room-submit").disabled = true;
  try {
    const [a, b] = await Promise.all([separate(rollout.name, stable, file), separate(rollout.name, canary, file)]);
    const names = Object.keys(a.stems).filter((n) => n in b.stems);
    const agreement = Object.fromEntries(names.map((n) => [n, Math.round(agreementDb(a.stems[n], b.stems[n]) * 100) / 100]));
    const rate = Number(a.parameters.sample_rate) || 44100;
    room = { player: new AbPlayer({ A: a.stems, B: b.stems }, names, rate), rollout, file, agreement,
      qualities: { A: quality(a.parameters), B: quality(b.parameters) }, sha: await sha256(file) };
    $("room-status").textContent = "Ready: play, and switch between A and B.";
    render();
  } catch (e) {
    $("room-status").textContent = "";
    showError(e instanceof ApiError ? e.message : `Failed: ${e.message}`);
  } finally {
    $("room-submit").disabled = false;
  }
}

function showError(text) {
  const message = $("room-message");
  message.textContent = text;
  message.hidden = false;
}

function render() {
  const { player, rollout, agreement, qualities } = room;
  const box = $("room-result");
  box.hidden = false;
  const { stable_version: stable, canary_version: canary } = rollout.rollout;
  const armButton = (arm, label) => {
    const b = el("button", { type: "button", class: "arm", "data-arm": arm, "aria-pressed": String(player.arm === arm) }, label);
    b.addEventListener("click", () => {
      player.switchTo(arm);
      for (const other of box.querySelectorAll("button.arm")) other.setAttribute("aria-pressed", String(other.dataset.arm === arm));
      box.dataset.arm = arm;
    });
    return b;
  };
  const fmt = (q) => (q == null ? "n/a" : q.toFixed(2));
  const stems = el("table", {},
    el("caption", {}, "Agreement: SDR of the canary's stem against the stable's (100 dB = identical)"),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Stem"), el("th", { scope: "col" }, "Agreement"), el("th", { scope: "col" }, "Listen"))),
    el("tbody", {}, ...Object.keys(agreement).map((n) => el("tr", { "data-stem": n },
      el("th", { scope: "row" }, n), el("td", { "data-role": "agreement" }, `${agreement[n].toFixed(1)} dB`),
      el("td", {}, ...player.mixer.buttons(n))))));
  const verdict = el("form", { id: "verdict-form" },
    el("fieldset", {}, el("legend", {}, `The canary (B, ${canary}) against the stable (A, ${stable}) is`),
      ...["better", "same", "worse"].map((v) => el("label", { class: "check" },
        el("input", { type: "radio", name: "verdict", value: v, required: true }), ` ${v}`))),
    el("label", { for: "verdict-note" }, "Note"),
    el("textarea", { id: "verdict-note", name: "note", rows: "2", maxlength: "2000" }),
    el("button", { type: "submit", class: "primary" }, "Record verdict"),
    el("span", { id: "verdict-status", role: "status", "aria-live": "polite" }));
  verdict.addEventListener("submit", record);
  box.dataset.arm = player.arm;
  box.replaceChildren(
    el("dl", { class: "facts" },
      el("dt", {}, "A: stable"), el("dd", { "data-role": "quality-A" }, `${rollout.name} ${stable}, quality ${fmt(qualities.A)}`),
      el("dt", {}, "B: canary"), el("dd", { "data-role": "quality-B" }, `${rollout.name} ${canary}, quality ${fmt(qualities.B)}`)),
    el("div", { class: "ab", role: "group", "aria-label": "Which version you hear" }, armButton("A", `A: stable ${stable}`), armButton("B", `B: canary ${canary}`)),
    transport(player, "A/B"), stems, verdict);
  player.onTick = () => { box.dataset.playing = String(player.playing); box.dataset.position = player.position().toFixed(2); };
}

async function record(event) {
  event.preventDefault();
  const form = event.target;
  const { rollout, file, agreement, qualities, sha } = room;
  try {
    await getJson("/v1/verdicts", { method: "POST", json: {
      model: rollout.name, stable_version: rollout.rollout.stable_version, canary_version: rollout.rollout.canary_version,
      verdict: form.verdict.value, note: form.note.value, track: file.name, track_sha256: sha, agreement_db: agreement,
      stable_quality: qualities.A, canary_quality: qualities.B } });
    $("verdict-status").textContent = "Recorded.";
    loadVerdicts();
  } catch (e) {
    $("verdict-status").textContent = e instanceof ApiError ? e.message : `Failed: ${e.message}`;
  }
}

async function loadVerdicts() {
  const body = $("verdicts-table").querySelector("tbody");
  try {
    const list = await getJson("/v1/verdicts?limit=20");
    body.replaceChildren(...list.verdicts.map((v) => el("tr", {},
      el("td", {}, new Date(v.created * 1000).toLocaleString()), el("td", {}, v.model),
      el("td", {}, `${v.canary_version} vs ${v.stable_version}`), el("td", {}, v.verdict), el("td", {}, v.track),
      el("td", {}, v.note))));
  } catch { body.replaceChildren(); }
}

export async function loadRoom() {
  try {
    const models = await getJson("/v1/models");
    rollouts = models.models.filter((m) => m.rollout);
    $("room-model").replaceChildren(...rollouts.map((m) => el("option", { value: m.name },
      `${m.name}: ${m.rollout.stable_version} → ${m.rollout.canary_version}`)));
    $("room-status").textContent = rollouts.length ? "" : "No model is rolling out a canary now.";
    loadVerdicts();
  } catch (e) {
    $("room-status").textContent = e instanceof ApiError ? e.message : `Failed: ${e.message}`;
  }
}

export function initRoom() { $("room-form").addEventListener("submit", compare); }
