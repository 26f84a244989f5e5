#!/usr/bin/env node
// fake_upstream.js - the LLM the gateway benchmark (bench/gateway/run.sh)
// calls: an OpenAI-compatible POST /v1/chat/completions that answers after a
// fixed delay, as one JSON answer or as a server-sent-event stream.
//
//   node fake_upstream.js [--port N] [--delay-ms MS] [--chunks N] [--interval-ms MS]
//
//   --port         where to listen on 127.0.0.1 (0: any free port; default 0).
//                  The port is printed as the first line: {"port": N}.
//   --delay-ms     time from the request's last byte to the answer (a JSON
//                  answer) or to the first chunk (a stream); default 50
//                  (environment FAKE_DELAY_MS)
//   --chunks       content chunks in a stream; default 8 (FAKE_CHUNKS)
//   --interval-ms  time between two chunks of a stream; default 5
//                  (FAKE_INTERVAL_MS)
//
// Answers: "stream": true in the request gives text/event-stream (chunked):
// a role chunk, the content chunks, a finish chunk, the usage chunk when
// stream_options.include_usage is true, then "data: [DONE]". Otherwise one
// chat.completion with usage. The model is echoed. When FAKE_API_KEY is set,
// a request without "Authorization: Bearer $FAKE_API_KEY" gets 401.
// Connections are kept alive (HTTP/1.1) unless the request says
// "Connection: close"; "Expect: 100-continue" is honoured.
//
// It speaks HTTP/1.1 on the net module with its own small parser rather than
// node's http module: a fake that must not be the bottleneck on a 2-core
// machine shared with the load generator and the gateway should do as little
// per request as it can (run.sh records its CPU time per run).
//
// GET /stats answers its counters: {"requests", "in_flight" (requests not
// yet answered in full), "streams", "open_streams", "max_open_streams",
// "bad_requests", "connections" (accepted so far), "open_connections"}.
// SIGTERM stops it.
'use strict';
const net = require('net');

function arg(name, env, dflt) {
  const i = process.argv.indexOf(name);
  if (i > 0 && i + 1 < process.argv.length) return Number(process.argv[i + 1]);
  if (process.env[env] !== undefined && process.env[env] !== '') return Number(process.env[env]);
  return dflt;
}
const PORT = arg('--port', 'FAKE_PORT', 0);
const DELAY_MS = arg('--delay-ms', 'FAKE_DELAY_MS', 50);
const CHUNKS = arg('--chunks', 'FAKE_CHUNKS', 8);
const INTERVAL_MS = arg('--interval-ms', 'FAKE_INTERVAL_MS', 5);
const API_KEY = process.env.FAKE_API_KEY || '';
const MAX_HEAD = 64 * 1024;
const MAX_BODY = 16 * 1024 * 1024;

const counters = { requests: 0, in_flight: 0, streams: 0, open_streams: 0, max_open_streams: 0, bad_requests: 0,
                   connections: 0, open_connections: 0 };
let nextId = 0;

// The answer's words: CHUNKS pieces for a stream, joined for a JSON answer.
const WORDS = [];
for (let i = 0; i < Math.max(CHUNKS, 1); i++) WORDS.push(i === 0 ? 'Hello' : ' word' + i);
const CONTENT = WORDS.join('');
const COMPLETION_TOKENS = WORDS.length;

function promptTokens(req) {
  // About four bytes a token over the message texts, as the gateway's estimate.
  let bytes = 0;
  if (Array.isArray(req.messages))
    for (const m of req.messages) if (m && typeof m.content === 'string') bytes += m.content.length;
  return Math.max(1, Math.ceil(bytes / 4));
}

// A JSON answer, head and body in one write.
function answerJson(sock, status, body, close) {
  sock.write('HTTP/1.1 ' + status + '\r\nContent-Type: application/json\r\nContent-Length: ' +
             Buffer.byteLength(body) + '\r\n' + (close ? 'Connection: close\r\n' : '') + '\r\n' + body);
  if (close) sock.end();
}

// A refused request: the connection is closed after the answer (st.busy
// stays set, so nothing more is read from it).
function fail(sock, st, status, message) {
  counters.bad_requests++;
  st.busy = true;
  answerJson(sock, status, JSON.stringify({ error: { message, type: 'invalid_request_error' } }), true);
}

function chunk(sock, text) {
  // One HTTP/1.1 chunk holding one SSE event.
  const ev = 'data: ' + text + '\n\n';
  sock.write(Buffer.byteLength(ev).toString(16) + '\r\n' + ev + '\r\n');
}

function stream(sock, st, req, id, created, usage) {
  counters.streams++;
  counters.open_streams++;
  st.streaming = true;
  if (counters.open_streams > counters.max_open_streams) counters.max_open_streams = counters.open_streams;
  const base = '{"id":"' + id + '","object":"chat.completion.chunk","created":' + created + ',"model":' +
               JSON.stringify(req.model) + ',"choices":';
  const includeUsage = !!(req.stream_options && req.stream_options.include_usage);
  // Writes are corked so that what leaves together is one write: the head,
  // the role chunk and the first content chunk; then each content chunk (the
  // last with the finish, usage and [DONE] events).
  sock.cork();
  sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n' +
             'Transfer-Encoding: chunked\r\n\r\n');
  chunk(sock, base + '[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}');
  let i = 0;
  const finish = () => {
    counters.open_streams--;
    st.streaming = false;
    st.timer = null;
    chunk(sock, base + '[{"index":0,"delta":{},"finish_reason":"stop"}]}');
    if (includeUsage) chunk(sock, base + '[],"usage":' + usage + '}');
    chunk(sock, '[DONE]');
    sock.write('0\r\n\r\n');
    if (st.close) sock.end();
    st.answering = false;
    counters.in_flight--;
    st.busy = false;
    drain(sock, st);
  };
  const next = () => {
    sock.cork();
    chunk(sock, base + '[{"index":0,"delta":{"content":' + JSON.stringify(WORDS[i]) + '},"finish_reason":null}]}');
    i++;
    if (i >= WORDS.length) finish();
    else st.timer = setTimeout(next, INTERVAL_MS);
    sock.uncork();
  };
  next();
  sock.uncork();
}

function handle(sock, st, head, body) {
  const [method, path] = head.split('\r\n', 1)[0].split(' ');
  if (method === 'GET' && path === '/stats') return answerJson(sock, '200 OK', JSON.stringify(counters), st.close);
  counters.requests++;
  if (method !== 'POST' || !path || !path.endsWith('/chat/completions'))
    return fail(sock, st, '404 Not Found', 'no such endpoint: ' + method + ' ' + path);
  if (API_KEY && st.auth !== 'Bearer ' + API_KEY) return fail(sock, st, '401 Unauthorized', 'bad API key');
  let req;
  try {
    req = JSON.parse(body);
  } catch (e) {
    return fail(sock, st, '400 Bad Request', 'the body is not JSON: ' + e.message);
  }
  if (!req || typeof req.model !== 'string' || !Array.isArray(req.messages))
    return fail(sock, st, '400 Bad Request', 'model and messages are required');
  st.busy = true;
  st.answering = true;
  counters.in_flight++;
  const id = 'chatcmpl-fake' + (nextId++);
  const created = Math.floor(Date.now() / 1000);
  const pt = promptTokens(req);
  const usage = '{"prompt_tokens":' + pt + ',"completion_tokens":' + COMPLETION_TOKENS + ',"total_tokens":' +
                (pt + COMPLETION_TOKENS) + '}';
  st.timer = setTimeout(() => {
    st.timer = null;
    if (req.stream === true) return stream(sock, st, req, id, created, usage);
    const body = '{"id":"' + id + '","object":"chat.completion","created":' + created + ',"model":' +
                 JSON.stringify(req.model) + ',"choices":[{"index":0,"message":{"role":"assistant","content":' +
                 JSON.stringify(CONTENT) + '},"finish_reason":"stop"}],"usage":' + usage + '}';
    answerJson(sock, '200 OK', body, st.close);
    st.answering = false;
    counters.in_flight--;
    st.busy = false;
    drain(sock, st);
  }, DELAY_MS);
}

// Parses every complete request in st.buf; one request at a time per
// connection (a pipelined one waits for the answer before it).
function drain(sock, st) {
  while (!st.busy && !sock.destroyed) {
    if (st.need < 0) {
      const end = st.buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (st.buf.length > MAX_HEAD) fail(sock, st, '431 Request Header Fields Too Large', 'head too large');
        return;
      }
      st.head = st.buf.toString('latin1', 0, end);
      st.buf = st.buf.subarray(end + 4);
      let len = 0;
      st.auth = '';
      st.close = false;
      let expect = false;
      for (const line of st.head.split('\r\n').slice(1)) {
        const c = line.indexOf(':');
        const name = line.slice(0, c).trim().toLowerCase();
        const value = line.slice(c + 1).trim();
        if (name === 'content-length') len = Number(value);
        else if (name === 'transfer-encoding') return fail(sock, st, '501 Not Implemented', 'chunked requests');
        else if (name === 'authorization') st.auth = value;
        else if (name === 'connection') st.close = value.toLowerCase() === 'close';
        else if (name === 'expect' && value.toLowerCase() === '100-continue') expect = true;
      }
      if (!Number.isInteger(len) || len < 0 || len > MAX_BODY) return fail(sock, st, '413 Payload Too Large', 'body');
      if (expect) sock.write('HTTP/1.1 100 Continue\r\n\r\n');
      st.need = len;
    }
    if (st.buf.length < st.need) return;
    const body = st.buf.toString('utf8', 0, st.need);
    st.buf = st.buf.subarray(st.need);
    st.need = -1;
    handle(sock, st, st.head, body);
  }
}

const server = net.createServer((sock) => {
  counters.connections++;
  sock.setNoDelay(true);
  const st = { buf: Buffer.alloc(0), need: -1, head: '', auth: '', close: false, busy: false, answering: false, streaming: false,
              timer: null };
  sock.on('data', (d) => {
    st.buf = st.buf.length ? Buffer.concat([st.buf, d]) : d;
    drain(sock, st);
  });
  counters.open_connections++;
  const gone = () => {
    counters.open_connections--;
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    if (st.streaming) counters.open_streams--;
    if (st.answering) counters.in_flight--;
    st.streaming = false;
    st.answering = false;
  };
  sock.on('close', gone);
  sock.on('error', () => {});
});
server.on('error', (e) => {
  console.error('fake_upstream: ' + e.message);
  process.exit(2);
});
server.listen({ port: PORT, host: '127.0.0.1', backlog: 8192 }, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, delay_ms: DELAY_MS, chunks: CHUNKS,
                                        interval_ms: INTERVAL_MS }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
