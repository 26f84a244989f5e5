// api.js - requests to this server. The API key typed in the header is kept
// in sessionStorage only (gone when the tab closes) and sent as X-API-Key.
// Errors come back as {status, code, message} from the server's one error
// shape, and the page shows what the server said.
'use strict';

const STORE = 'aiserve.key';

export function getKey() { return sessionStorage.getItem(STORE) || ''; }
export function setKey(k) { if (k) sessionStorage.setItem(STORE, k); else sessionStorage.removeItem(STORE); }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch with the key; resolves to {status, headers, body} (body parsed as
// JSON when it is JSON), rejects with ApiError for a status >= 400.
export async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({}, extraHeaders || {});
  const key = getKey();
  if (key) headers['X-API-Key'] = key;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  // No cache option: the browser would send Cache-Control: no-cache, which
  // asks the server for a fresh answer (a cache bypass) on every request.
  const r = await fetch(path, { method, headers, body: payload });
  const type = r.headers.get('Content-Type') || '';
  const json = type.split(';')[0].trim() === 'application/json'; // not application/jsonl
  const data = json ? await r.json().catch(() => null) : await r.text();
  if (r.status >= 400) {
    const e = data && data.error ? data.error : {};
    throw new ApiError(r.status, e.code || String(r.status), explain(r.status, e));
  }
  return { status: r.status, headers: r.headers, body: data };
}

function explain(status, e) {
  const what = e.message || ('HTTP ' + status);
  if (status === 401) return what + ' (enter an API key above)';
  if (status === 403) return what + (e.code === 'insufficient_scope' ? '' : ' (check the API key above)');
  return what;
}

export const get = (path) => api('GET', path);
export const put = (path, body) => api('PUT', path, body);
export const post = (path, body, headers) => api('POST', path, body, headers);
export const del = (path) => api('DELETE', path);
export const enc = encodeURIComponent;
