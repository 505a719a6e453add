// k6 load test of the musicsplit gateway: real audio uploads through the async
// jobs API (/v1/separations, followed over the progress WebSocket, then a stem
// download) and through the KServe v2 pass-through (binary tensor extension).
//
// Run it through `musicsplit loadtest SCENARIO` (it renders the tracks, sets the
// environment below and reads the summary), or by hand:
//   MUSICSPLIT_URL=http://127.0.0.1:8080 TRACKS_FILE=/abs/tracks.json SCENARIO=ramp \
//     SUMMARY_PATH=/abs/ramp.json k6 run loadtest/separations.js
//
// Environment: MUSICSPLIT_URL (gateway base URL), MUSICSPLIT_API_KEY (sent as
// `Authorization: Bearer KEY` when set), MUSICSPLIT_MODEL (default `default`),
// SCENARIO (a key of scenarios.json), TRACKS_FILE (JSON list of {path, seconds}:
// PCM wav files whose data chunk comes last), V2_SHARE (fraction of iterations
// that use the v2 pass-through, default 0.25), RATE (arrivals per second, for
// the constant-arrival-rate scenario), DURATION (overrides a constant scenario's),
// JOB_TIMEOUT_S, RUN_ID, SUMMARY_PATH.
//
// Outcomes: a separation served (200/202 then a stem) is `ok`; a 429 or 503
// carrying Retry-After is a correct refusal (`refused`); anything else (another
// status, a refusal without Retry-After, a failed or timed-out job, a missing
// stem) is `failed`. The `checks` threshold requires every check to pass.

import http from 'k6/http';
import ws from 'k6/ws';
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE = (__ENV.MUSICSPLIT_URL || '').replace(/\/+$/, '');
if (!BASE) {
  throw new Error('set MUSICSPLIT_URL to the gateway base URL, e.g. http://127.0.0.1:8080');
}
const API_KEY = __ENV.MUSICSPLIT_API_KEY || '';
const MODEL = __ENV.MUSICSPLIT_MODEL || 'default';
const SCENARIO_NAME = __ENV.SCENARIO || 'smoke';
const ALL = JSON.parse(open(__ENV.SCENARIOS_FILE || './scenarios.json'));
const SPEC = ALL[SCENARIO_NAME];
if (!SPEC || SCENARIO_NAME.startsWith('_')) {
  throw new Error(`unknown SCENARIO ${SCENARIO_NAME}: use one of ${Object.keys(ALL).filter((k) => !k.startsWith('_'))}`);
}
const V2_SHARE = parseFloat(__ENV.V2_SHARE || '0.25');
const JOB_TIMEOUT_S = parseFloat(__ENV.JOB_TIMEOUT_S || '180');
const MAX_RETRY_WAIT_S = parseFloat(__ENV.MAX_RETRY_WAIT_S || '30');
const DURATION = __ENV.DURATION || SPEC.duration; // constant executors only
const RUN_ID = parseInt(__ENV.RUN_ID || `${Date.now() % 2147483647}`, 10);
const TERMINAL = ['succeeded', 'failed', 'cancelled', 'expired'];

// Each VU holds its own copy of every track (open() in the init context; SharedArray
// cannot hold binary), so tracks stay short: a few MB per VU.
const TRACKS = JSON.parse(open(__ENV.TRACKS_FILE)).map((t) => ({
  name: t.path.split('/').pop(),
  seconds: t.seconds,
  data: open(t.path, 'b'),
}));

const separationSeconds = new Trend('separation_seconds', false); // tags: api
// One counter per outcome (tag: api), so each appears in the summary on its own.
const outcomes = { ok: new Counter('separations_ok'), refused: new Counter('separations_refused'),
                   failed: new Counter('separations_failed') };
// Progress sockets refused at the handshake (the job was then polled): a cost, not a failure.
const socketsRefused = new Counter('progress_sockets_refused');
function record(api, outcome) {
  outcomes[outcome].add(1, { api });
}

function buildScenario() {
  const common = { exec: 'separate', gracefulStop: `${Math.ceil(JOB_TIMEOUT_S)}s` };
  switch (SPEC.executor) {
    case 'constant-vus':
      return { ...common, executor: 'constant-vus', vus: SPEC.vus, duration: DURATION };
    case 'ramping-vus':
      if (__ENV.DURATION) throw new Error(`scenario ${SCENARIO_NAME} ramps through stages: DURATION does not apply`);
      return { ...common, executor: 'ramping-vus', startVUs: SPEC.start_vus, stages: SPEC.stages,
               gracefulRampDown: `${Math.ceil(JOB_TIMEOUT_S)}s` };
    case 'constant-arrival-rate': {
      const rate = parseFloat(__ENV.RATE || '0');
      if (!(rate > 0)) {
        throw new Error(`scenario ${SCENARIO_NAME} needs RATE (arrivals per second, e.g. 2x measured capacity)`);
      }
      // Whole arrivals per minute: k6 takes an integer rate per timeUnit.
      return { ...common, executor: 'constant-arrival-rate', rate: Math.max(1, Math.round(rate * 60)),
               timeUnit: '1m', duration: DURATION, preAllocatedVUs: SPEC.pre_allocated_vus,
               maxVUs: SPEC.max_vus };
    }
    default:
      throw new Error(`scenario ${SCENARIO_NAME}: unknown executor ${SPEC.executor}`);
  }
}

const SCENARIO = buildScenario();

export const options = {
  scenarios: { [SCENARIO_NAME]: SCENARIO },
  thresholds: {
    // Every request served or refused with Retry-After; every accepted job succeeded.
    checks: ['rate==1'],
    separations_failed: ['count==0'],
    'separation_seconds{api:jobs}': [`p(99)<${SPEC.p99_s.jobs}`],
    'separation_seconds{api:v2}': [`p(99)<${SPEC.p99_s.v2}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
  discardResponseBodies: true,
  setupTimeout: '60s',
};

function headers(extra) {
  const h = { 'X-User-Id': `loadtest-vu-${exec.vu.idInTest}`, ...extra };
  if (API_KEY) h.Authorization = `Bearer ${API_KEY}`;
  return h;
}

// A copy of the track whose last two frames carry this run, VU and iteration: every
// upload is a distinct file, so neither the result cache nor single-flight
// deduplication answers it (as with real users' different songs).
function uniqueCopy(track) {
  const copy = track.data.slice(0);
  const view = new DataView(copy);
  view.setUint32(copy.byteLength - 8, RUN_ID >>> 0, true);
  view.setUint32(copy.byteLength - 4, ((exec.vu.idInTest & 0xffff) << 16) | (exec.vu.iterationInScenario & 0xffff), true);
  return copy;
}

function retryAfter(res) {
  const value = res.headers['Retry-After'];
  if (!value) return null;
  const seconds = parseFloat(value);
  return Number.isNaN(seconds) ? 1 : seconds;
}

// 429/503 with Retry-After is a correct refusal; true when `res` was one.
function refused(res, api) {
  if (res.status !== 429 && res.status !== 503) return false;
  const wait = retryAfter(res);
  const ok = check(res, { [`${api}: 429/503 carries Retry-After`]: () => wait !== null });
  record(api, ok ? 'refused' : 'failed');
  if (ok && SPEC.honor_retry_after) sleep(Math.min(wait, MAX_RETRY_WAIT_S));
  return true;
}

function failed(api, what, res) {
  check(res, { [`${api}: ${what}`]: () => false });
  record(api, 'failed');
}

// Follow a job over its progress WebSocket until it is terminal (or the timeout). A socket
// refused at the handshake (429 + Retry-After: the tenant's sockets are all taken) is no
// failure of the job: like a real client, poll the job's status instead, at Retry-After.
function follow(jobId) {
  const url = `${BASE.replace(/^http/, 'ws')}/v1/separations/${jobId}/progress`;
  let last = null;
  const res = ws.connect(url, { headers: headers(), tags: { name: 'progress' } }, (socket) => {
    socket.on('message', (raw) => {
      last = JSON.parse(raw);
      if (TERMINAL.includes(last.status)) socket.close();
    });
    socket.setTimeout(() => socket.close(), JOB_TIMEOUT_S * 1000);
  });
  if (res && res.status === 429 && retryAfter(res) !== null) {
    socketsRefused.add(1);
    return poll(jobId, retryAfter(res));
  }
  return { res, last };
}

function poll(jobId, every) {
  const deadline = Date.now() + JOB_TIMEOUT_S * 1000;
  let res = null;
  let last = null;
  while (Date.now() < deadline) {
    sleep(Math.min(Math.max(every, 0.5), MAX_RETRY_WAIT_S));
    res = http.get(`${BASE}/v1/separations/${jobId}`, { headers: headers(), responseType: 'text', tags: { name: 'poll' } });
    if (res.status === 200) {
      last = res.json();
      if (TERMINAL.includes(last.status)) break;
    }
  }
  return { res, last };
}

function viaJobs(track) {
  const start = Date.now();
  const body = { file: http.file(uniqueCopy(track), track.name, 'audio/wav'), model: MODEL };
  const up = http.post(`${BASE}/v1/separations`, body,
    { headers: headers(), responseType: 'text', tags: { name: 'upload', api: 'jobs' } });
  if (refused(up, 'jobs')) return;
  if (!check(up, { 'jobs: upload accepted (202)': (r) => r.status === 202 })) {
    record('jobs', 'failed');
    return;
  }
  const job = up.json();
  const { res, last } = TERMINAL.includes(job.status) ? { res: null, last: job } : follow(job.id);
  if (!last || !TERMINAL.includes(last.status)) {
    failed('jobs', `job finished within ${JOB_TIMEOUT_S} s`, res);
    return;
  }
  if (!check(last, { 'jobs: job succeeded': (j) => j.status === 'succeeded' })) {
    record('jobs', 'failed');
    return;
  }
  const stem = http.get(`${BASE}/v1/separations/${job.id}/stems/vocals`,
    { headers: headers(), tags: { name: 'stem', api: 'jobs' } });
  if (!check(stem, { 'jobs: stem downloaded': (r) => r.status === 200 && parseInt(r.headers['Content-Length'] || '0', 10) > 44 })) {
    record('jobs', 'failed');
    return;
  }
  separationSeconds.add((Date.now() - start) / 1000, { api: 'jobs' });
  record('jobs', 'ok');
}

function asciiBytes(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// A v2 request carrying the encoded file as one BYTES element (binary tensor
// extension: JSON header, then a 4-byte little-endian length and the file).
function v2Body(track) {
  const file = new Uint8Array(uniqueCopy(track));
  const header = asciiBytes(JSON.stringify({
    inputs: [{ name: 'audio', shape: [1], datatype: 'BYTES', parameters: { binary_data_size: file.length + 4 } }],
    parameters: { output_format: 'wav', stems: 'vocals', binary_data_output: true },
  }));
  const body = new Uint8Array(header.length + 4 + file.length);
  body.set(header, 0);
  new DataView(body.buffer).setUint32(header.length, file.length, true);
  body.set(file, header.length + 4);
  return { body: body.buffer, headerLength: header.length };
}

function viaV2(track) {
  const { body, headerLength } = v2Body(track);
  const model = encodeURIComponent(MODEL);
  const res = http.post(`${BASE}/v2/models/${model}/infer`, body, {
    headers: headers({ 'Content-Type': 'application/octet-stream', 'Inference-Header-Content-Length': `${headerLength}` }),
    tags: { name: 'v2 infer', api: 'v2' },
    timeout: `${JOB_TIMEOUT_S}s`,
  });
  if (refused(res, 'v2')) return;
  if (!check(res, { 'v2: separated (200 with a model version)': (r) => r.status === 200 && !!r.headers['X-Musicsplit-Model-Version'] })) {
    record('v2', 'failed');
    return;
  }
  separationSeconds.add(res.timings.duration / 1000, { api: 'v2' });
  record('v2', 'ok');
}

export function separate() {
  const track = TRACKS[(exec.vu.idInTest + exec.vu.iterationInScenario) % TRACKS.length];
  if (Math.random() < V2_SHARE) viaV2(track);
  else viaJobs(track);
  if (SPEC.think_s > 0) sleep(SPEC.think_s * (0.5 + Math.random()));
}

export function handleSummary(data) {
  data.musicsplit = { scenario: SCENARIO_NAME, spec: { ...SPEC, duration: DURATION }, url: BASE, model: MODEL, v2_share: V2_SHARE,
                      rate: parseFloat(__ENV.RATE || '0') || null, run_id: RUN_ID,
                      k6_scenario: SCENARIO,
                      tracks: TRACKS.map((t) => ({ name: t.name, seconds: t.seconds, bytes: t.data.byteLength })) };
  const out = { stdout: textSummary(data) };
  if (__ENV.SUMMARY_PATH) out[__ENV.SUMMARY_PATH] = JSON.stringify(data, null, 1);
  return out;
}

function textSummary(data) {
  const m = data.metrics;
  const lines = [`\nmusicsplit loadtest ${SCENARIO_NAME} against ${BASE} (model ${MODEL})`];
  const count = (name) => (m[name] ? m[name].values.count : 0);
  lines.push(`  separations ok ${count('separations_ok')}, refused ${count('separations_refused')}, ` +
             `failed ${count('separations_failed')}`);
  for (const api of ['jobs', 'v2']) {
    const t = m[`separation_seconds{api:${api}}`];
    if (t && t.values.count) {
      lines.push(`  ${api}: p50 ${t.values.med.toFixed(2)} s, p95 ${t.values['p(95)'].toFixed(2)} s, ` +
                 `p99 ${t.values['p(99)'].toFixed(2)} s over ${t.values.count}`);
    }
  }
  for (const [name, metric] of Object.entries(m)) {
    for (const [expr, verdict] of Object.entries(metric.thresholds || {})) {
      lines.push(`  threshold ${name} ${expr}: ${verdict.ok ? 'ok' : 'FAILED'}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
