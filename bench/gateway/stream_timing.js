#!/usr/bin/env node
// stream_timing.js - how a streamed answer arrives, event by event, for the
// gateway benchmark (bench/gateway/run.sh): wrk sees only the time to a
// stream's last byte, while a chat user sees the first token and the pace of
// the rest. One connection, N streams one after another.
//
//   node stream_timing.js --url http://127.0.0.1:PORT [--n 30] [--bearer KEY]
//
// Per stream, from the moment the request is written: "first_ms" (the first
// content event arrived), "last_ms" (the last byte) and "max_gap_ms" (the
// longest wait between two content events; the fake spaces them by its
// --interval-ms). Output: one JSON line: {"n", "first_ms", "last_ms",
// "max_gap_ms"}, each {"p50", "max"} over the streams. Exits non-zero on an
// error answer, a broken stream or after 60 s.
'use strict';
const net = require('net');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const url = new URL(arg('--url', ''));
const N = Number(arg('--n', '30'));
const BEARER = arg('--bearer', '');
const body = JSON.stringify({
  model: 'bench', stream: true, stream_options: { include_usage: true },
  messages: [{ role: 'user', content: 'Say hello in French, in one short sentence.' }],
});
const request = 'POST /v1/chat/completions HTTP/1.1\r\nHost: ' + url.host + '\r\nContent-Type: application/json\r\n' +
                (BEARER ? 'Authorization: Bearer ' + BEARER + '\r\n' : '') + 'Content-Length: ' +
                Buffer.byteLength(body) + '\r\n\r\n' + body;

const stats = { first_ms: [], last_ms: [], max_gap_ms: [] };
const sock = net.connect(Number(url.port), url.hostname);
sock.setNoDelay(true);
sock.setEncoding('latin1');
let t0 = 0n;
let text = '';
let contentTimes = [];
let seen = 0;

const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
function start() {
  text = '';
  contentTimes = [];
  seen = 0;
  t0 = process.hrtime.bigint();
  sock.write(request);
}
function fail(why) {
  process.stderr.write('stream_timing: ' + why + '\n');
  process.exit(1);
}
sock.on('connect', start);
sock.on('error', (e) => fail(e.message));
sock.on('close', () => fail('the server closed the connection'));
setTimeout(() => fail('not done in 60 s'), 60000).unref();
sock.on('data', (d) => {
  const now = ms();
  text += d;
  if (!text.startsWith('HTTP/1.1 200')) {
    if (text.length > 12) fail('answer: ' + text.slice(0, 200));
    return;
  }
  // Content events that arrived in this read ("content" with a non-empty
  // value; the role chunk's content is "").
  for (let at = text.indexOf('"content":"', seen); at >= 0; at = text.indexOf('"content":"', at + 1)) {
    seen = at + 1;
    if (text[at + 11] !== '"') contentTimes.push(now);
  }
  if (!text.endsWith('\r\n0\r\n\r\n')) return;
  if (!text.includes('data: [DONE]') || contentTimes.length === 0) fail('a broken stream: ' + text.slice(-200));
  stats.first_ms.push(contentTimes[0]);
  stats.last_ms.push(now);
  let gap = 0;
  for (let i = 1; i < contentTimes.length; i++) gap = Math.max(gap, contentTimes[i] - contentTimes[i - 1]);
  stats.max_gap_ms.push(gap);
  if (stats.last_ms.length < N) return void start();
  const sum = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return { p50: Number(s[Math.floor((s.length - 1) / 2)].toFixed(3)), max: Number(s[s.length - 1].toFixed(3)) };
  };
  process.stdout.write(JSON.stringify({ n: N, first_ms: sum(stats.first_ms), last_ms: sum(stats.last_ms),
                                        max_gap_ms: sum(stats.max_gap_ms) }) + '\n');
  process.exit(0);
});
