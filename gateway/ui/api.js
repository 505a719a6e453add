// The public API, as any client calls it: a Bearer API key (kept in this tab's session storage,
// never in a URL) or none on an open gateway; every refusal turned into a message a person can act on.

const KEY = "musicsplit.apiKey";

export function apiKey() { return sessionStorage.getItem(KEY) || ""; }
export function setApiKey(key) { key ? sessionStorage.setItem(KEY, key) : sessionStorage.removeItem(KEY); }

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

export class ApiError extends Error {
  constructor(status, body, headers) {
    super(explain(status, body, headers));
    this.status = status;
    this.code = body && body.code;
    this.retryAfter = Number(headers && headers.get ? headers.get("Retry-After") : NaN);
  }
}

function bytes(n) {
  n = Number(n);
  if (!isFinite(n)) return "";
  return n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(1)} GiB` : n >= 1024 ** 2 ? `${(n / 1024 ** 2).toFixed(0)} MiB`
    : `${(n / 1024).toFixed(0)} KiB`;
}

/** A refusal in words: what happened and what to do. */
export function explain(status, body, headers) {
  const said = (body && body.error) || "";
  const retry = Number(headers && headers.get ? headers.get("Retry-After") : NaN);
  if (status === 429) {
    const when = isFinite(retry) ? ` Try again in ${Math.ceil(retry)} s (after ${new Date(Date.now() + retry * 1000)
      .toLocaleTimeString()}).` : " Try again in a little while.";
    return `Refused (429, too many requests or quota used up): ${said}.${when}`;
  }
  if (status === 413) {
    const limit = /limit of (\d+) bytes/.exec(said);
    return `Refused (413, too large): ${said}.` + (limit ? ` The limit is ${bytes(limit[1])}.` : "");
  }
  if (status === 400) return `Refused (400, fix the request): ${said}`;
  if (status === 401) return `Not signed in (401): ${said || "give your API key"}`;
  if (status === 403) return `Not allowed (403): ${said}`;
  if (status === 404) return `Not found (404): ${said}`;
  if (status === 409) return `Not possible now (409): ${said}`;
  if (status === 503) return `Unavailable (503): ${said}.` + (isFinite(retry) ? ` Try again in ${Math.ceil(retry)} s.` : "");
  return `Failed (${status}): ${said || "the gateway gave no reason"}`;
}

async function bodyOf(response) {
  try { return await response.json(); } catch { return null; }
}

/** fetch() with the caller's credentials; ApiError on any non-2xx. */
export async function call(path, { method = "GET", json, body, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new ApiError(response.status, await bodyOf(response), response.headers);
  return response;
}

export async function getJson(path, options) { return (await call(path, options)).json(); }

/** A multipart POST with upload progress (fetch has none): resolves with the JSON answer. */
export function postForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new Error("the upload did not reach the gateway (network error)"));
    xhr.onload = () => {
      let doc = null;
      try { doc = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      const headers = { get: (name) => xhr.getResponseHeader(name) };
      if (xhr.status >= 200 && xhr.status < 300) resolve(doc);
      else reject(new ApiError(xhr.status, doc, headers));
    };
    xhr.send(form);
  });
}

/** A presigned upload where the gateway has one (501 where its storage is a local disk): the upload_id, or null. */
export async function presignedUpload(file, onProgress) {
  let slot;
  try {
    slot = await getJson("/v1/uploads", { method: "POST", json: { bytes: file.size } });
  } catch (e) {
    if (e.status === 501) return null;
    throw e;
  }
  await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(slot.method || "PUT", slot.url);
    for (const [k, v] of Object.entries(slot.headers || {})) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new Error("the upload to storage failed (network error, or the bucket's CORS rules)"));
    xhr.onload = () => (xhr.status < 300 ? resolve() : reject(new Error(`the upload to storage failed (${xhr.status})`)));
    xhr.send(file);
  });
  return slot.upload_id;
}

/** A file the API serves (a stem, the zip), fetched with credentials, as a Blob. */
export async function blob(path) { return (await call(path)).blob(); }

export function saveBlob(data, filename) {
  const url = URL.createObjectURL(data);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function websocketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
