// Players: one <audio> element per stem under one transport (play/pause, one position for all;
// solo and mute per stem), and a waveform per stem drawn from the decoded audio.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function clock(seconds) {
  if (!isFinite(seconds)) return "0:00";
  const s = Math.max(0, seconds);
  return `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

/** Min/max peaks of a channel (or their mean over channels) into `canvas`, in its CSS size. */
export function drawWaveform(canvas, channels, color = "#1f4e79") {
  const width = canvas.clientWidth || 600, height = canvas.clientHeight || 48;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = color;
  const n = channels[0].length, per = Math.max(1, Math.floor(n / width)), mid = height / 2;
  for (let x = 0; x < width; x++) {
    let lo = 0, hi = 0;
    const start = x * per, end = Math.min(n, start + per);
    for (let i = start; i < end; i++) {
      let v = 0;
      for (const ch of channels) v += ch[i];
      v /= channels.length;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    ctx.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
}

export async function decode(arrayBuffer) {
  const ctx = new OfflineAudioContext(1, 1, 44100);
  const buffer = await ctx.decodeAudioData(arrayBuffer);
  return Array.from({ length: buffer.numberOfChannels }, (_, i) => buffer.getChannelData(i));
}

/** Solo/mute state of a set of stems: which are audible. */
export class Mixer {
  constructor(names, onChange) {
    this.names = names;
    this.muted = new Set();
    this.solo = new Set();
    this.onChange = onChange;
  }
  audible(name) { return this.solo.size ? this.solo.has(name) : !this.muted.has(name); }
  toggle(set, name) { set.has(name) ? set.delete(name) : set.add(name); this.onChange(); }
  buttons(name) {
    const mute = el("button", { type: "button", class: "toggle", "aria-pressed": "false",
      "aria-label": `Mute ${name}`, "data-stem": name, "data-role": "mute" }, "Mute");
    const solo = el("button", { type: "button", class: "toggle", "aria-pressed": "false",
      "aria-label": `Solo ${name}`, "data-stem": name, "data-role": "solo" }, "Solo");
    mute.addEventListener("click", () => { this.toggle(this.muted, name); mute.setAttribute("aria-pressed", String(this.muted.has(name))); });
    solo.addEventListener("click", () => { this.toggle(this.solo, name); solo.setAttribute("aria-pressed", String(this.solo.has(name))); });
    return [solo, mute];
  }
}

/** The transport's controls: play/pause, a position slider, the time. `player` has
 * play(), pause(), seek(t), position(), duration(), playing. */
export function transport(player, label) {
  const play = el("button", { type: "button", class: "primary", "data-role": "play" }, "Play");
  const slider = el("input", { type: "range", min: "0", max: "1000", value: "0", step: "1",
    "aria-label": `${label} position`, "data-role": "seek" });
  const time = el("span", { class: "time", "aria-live": "off" }, "0:00 / 0:00");
  let dragging = false;
  play.addEventListener("click", () => (player.playing ? player.pause() : player.play()));
  slider.addEventListener("input", () => { dragging = true; });
  slider.addEventListener("change", () => { dragging = false; player.seek(slider.value / 1000 * player.duration()); });
  const update = () => {
    const d = player.duration(), t = player.position();
    if (!dragging && d > 0) slider.value = String(Math.round(t / d * 1000));
    time.textContent = `${clock(t)} / ${clock(d)}`;
    play.textContent = player.playing ? "Pause" : "Play";
    play.setAttribute("aria-label", `${player.playing ? "Pause" : "Play"} ${label}`);
    player.onTick && player.onTick(t, d);
  };
  const root = el("div", { class: "transport" }, play, slider, time);
  let shown = false;
  const loop = () => {  // until the controls leave the page (a new result replaced them)
    shown ||= root.isConnected;
    if (shown && !root.isConnected) return;
    update();
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
  return root;
}

/** Stems as <audio> elements kept in step: one position, one play state. */
export class StemPlayer {
  constructor(stems) {  // [{name, url}]
    this.audios = new Map(stems.map((s) => [s.name, el("audio", { preload: "auto", src: s.url, "data-stem": s.name })]));
    this.mixer = new Mixer(stems.map((s) => s.name), () => this.apply());
    this.playing = false;
    const first = this.audios.values().next().value;
    this.master = first;
    first.addEventListener("timeupdate", () => this.keepInStep());
    first.addEventListener("ended", () => this.pause(true));
  }
  apply() { for (const [name, a] of this.audios) a.muted = !this.mixer.audible(name); }
  duration() { return this.master.duration || 0; }
  position() { return this.master.currentTime || 0; }
  async play() {
    const t = this.position() >= this.duration() - 0.05 ? 0 : this.position();
    for (const a of this.audios.values()) a.currentTime = t;
    this.playing = true;
    await Promise.all([...this.audios.values()].map((a) => a.play()));
  }
  pause(ended = false) {
    for (const a of this.audios.values()) a.pause();
    this.playing = false;
    if (ended) this.seek(0);
  }
  seek(t) { for (const a of this.audios.values()) a.currentTime = t; }
  keepInStep() {  // elements drift apart by a few ms; pull any that drifted audibly back to the master
    if (!this.playing) return;
    const t = this.master.currentTime;
    for (const a of this.audios.values()) if (a !== this.master && Math.abs(a.currentTime - t) > 0.04) a.currentTime = t;
  }
  destroy() {
    this.pause();
    for (const a of this.audios.values()) { URL.revokeObjectURL(a.src); a.removeAttribute("src"); a.load(); }
  }
}
