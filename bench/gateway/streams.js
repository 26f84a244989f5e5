#!/usr/bin/env node
// streams.js - the open-streams part of the gateway benchmark
// (bench/gateway/run.sh): opens up to N streamed chat completions through
// aiserve at once, each a slow stream (the fake upstream started with a long
// chunk interval), and measures aiserve's resident memory before and with
// all of them open.
//
//   node streams.js --url http://127.0.0.1:PORT --pid AISERVE_PID [--n 5000]
//                   [--model bench] [--chunks 20] [--fake-url URL]
//                   [--batch 250] [--batch-ms 50] [--deadline-s 60]
//
//   --chunks    content chunks the fake sends per stream (to know a whole one)
//   --fake-url  the fake upstream, for its counters (GET /stats)
//   --batch, --batch-ms   streams opened per step, and the pause between
//               steps (a ramp, so the listen queues are not flooded)
//
// A stream counts as open once it has its 200 head and its first content
// event; as complete once "data: [DONE]" came after every chunk. VmRSS is
// read from /proc/PID/status: before the first connection, every 100 ms
// while streams open (so the growth per stream can be fitted), once all
// are open (or the opening gives up), and after they have all ended.
// Everything stops by itself at --deadline-s (connections still open are
// then counted as not served).
//
// Output: one JSON line on stdout: {"asked", "opened", "completed",
// "failed": {reason: count}, "open_s" (first connection to the last stream
// open), "rss_kb": {"before", "all_open", "peak", "after"}, "rss_per_stream_kb"
// ((all_open - before) / opened), "rss_slope_kb" (least-squares slope of RSS
// over open streams during the ramp), "ramp": [[open, rss_kb], ...],
// "fake": the fake's counters at the end, "elapsed_s"}.
'use strict';
const net = require('net');
const fs = require('fs');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const url = new URL(arg('--url', ''));
const PID = Number(arg('--pid', '0'));
const N = Number(arg('--n', '5000'));
const MODEL = arg('--model', 'bench');
const CHUNKS = Number(arg('--chunks', '20'));
const FAKE_URL = arg('--fake-url', '');
const BATCH = Number(arg('--batch', '250'));
const BATCH_MS = Number(arg('--batch-ms', '50'));
const DEADLINE_S = Number(arg('--deadline-s', '60'));
if (!PID || !url.port) {
  process.stderr.write('usage: node streams.js --url http://127.0.0.1:PORT --pid PID [--n N] ...\n');
  process.exit(2);
}

const body = JSON.stringify({
  model: MODEL, stream: true, stream_options: { include_usage: true },
  messages: [{ role: 'user', content: 'Tell me a long story, one word at a time.' }],
});
const request = Buffer.from('POST /v1/chat/completions HTTP/1.1\r\nHost: ' + url.host +
                            '\r\nContent-Type: application/json\r\nContent-Length: ' + Buffer.byteLength(body) +
                            '\r\n\r\n' + body);
// Events per whole stream: the role chunk, the content chunks, the finish
// chunk, the usage chunk and [DONE].
const EVENTS = CHUNKS + 4;

function rssKb() {
  try {
    const m = fs.readFileSync('/proc/' + PID + '/status', 'latin1').match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Number(m[1]) : null;
  } catch (e) {
    return null;
  }
}

function fakeStats() {
  return new Promise((resolve) => {
    if (!FAKE_URL) return resolve(null);
    const u = new URL(FAKE_URL);
    const s = net.connect(Number(u.port), u.hostname, () =>
      s.write('GET /stats HTTP/1.1\r\nHost: ' + u.host + '\r\nConnection: close\r\n\r\n'));
    let text = '';
    s.setEncoding('latin1');
    s.on('data', (d) => (text += d));
    s.on('close', () => {
      try {
        resolve(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)));
      } catch (e) {
        resolve(null);
      }
    });
    s.on('error', () => resolve(null));
  });
}

const t0 = process.hrtime.bigint();
const seconds = () => Number(process.hrtime.bigint() - t0) / 1e9;
const streams = [];
const failed = {};
let opened = 0;
let completed = 0;
let ended = 0;
let lastOpenAt = 0;
const ramp = [];
const rss = { before: rssKb(), all_open: null, peak: 0, after: null };

function finishStream(st, reason) {
  if (st.done) return;
  st.done = true;
  ended++;
  if (reason) failed[reason] = (failed[reason] || 0) + 1;
  else completed++;
  st.sock.destroy();
}

function open(i) {
  const st = { status: 0, events: 0, tail: '', isOpen: false, done: false, sock: null };
  streams[i] = st;
  st.sock = net.connect(Number(url.port), url.hostname, () => st.sock.write(request));
  st.sock.setEncoding('latin1');
  st.sock.on('data', (d) => {
    const text = st.tail + d;
    if (!st.status) {
      const m = text.match(/^HTTP\/1\.1 (\d{3})/);
      if (!m) return void (st.tail = text.length < 4096 ? text : '');
      st.status = Number(m[1]);
      if (st.status !== 200) return finishStream(st, 'http_' + st.status);
    }
    // Count "data: " that end after the kept tail (the tail's own were
    // counted before).
    for (let at = text.indexOf('data: '); at >= 0; at = text.indexOf('data: ', at + 1))
      if (at + 6 > st.tail.length) st.events++;
    const done = text.indexOf('data: [DONE]') >= 0;
    st.tail = text.slice(-16);
    if (!st.isOpen && st.events >= 2) {
      st.isOpen = true;
      opened++;
      lastOpenAt = seconds();
    }
    if (done) finishStream(st, st.events >= EVENTS ? null : 'short_stream');
  });
  st.sock.on('error', (e) => finishStream(st, e.code || 'socket_error'));
  st.sock.on('close', () => finishStream(st, 'closed_early'));
}

let next = 0;
function openBatch() {
  for (let k = 0; k < BATCH && next < N; k++) open(next++);
  if (next < N) setTimeout(openBatch, BATCH_MS);
}

let allOpenSeen = false;
const sampler = setInterval(() => {
  const kb = rssKb();
  if (kb !== null && kb > rss.peak) rss.peak = kb;
  if (!allOpenSeen) ramp.push([opened, kb]);
  // All open: every stream is open or has ended (failed) without opening.
  if (!allOpenSeen && next >= N && opened + (ended - countEndedOpen()) >= N) {
    allOpenSeen = true;
    rss.all_open = kb;
  }
  if (ended >= N || seconds() > DEADLINE_S) finish();
}, 100);

function countEndedOpen() {
  let n = 0;
  for (const st of streams) if (st && st.done && st.isOpen) n++;
  return n;
}

function slope(points) {
  const p = points.filter(([x, y]) => y !== null);
  if (p.length < 2) return null;
  const mx = p.reduce((a, [x]) => a + x, 0) / p.length;
  const my = p.reduce((a, [, y]) => a + y, 0) / p.length;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of p) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) * (x - mx);
  }
  return sxx > 0 ? sxy / sxx : null;
}

let finishing = false;
async function finish() {
  if (finishing) return;
  finishing = true;
  clearInterval(sampler);
  for (const st of streams) if (st && !st.done) finishStream(st, 'deadline');
  if (rss.all_open === null) rss.all_open = rss.peak;
  const fake = await fakeStats();
  // Give the server a moment to close its side, then read what it keeps.
  setTimeout(() => {
    rss.after = rssKb();
    const out = {
      asked: N, opened, completed, failed,
      open_s: Number(lastOpenAt.toFixed(3)),
      rss_kb: rss,
      rss_per_stream_kb: opened ? Number(((rss.all_open - rss.before) / opened).toFixed(2)) : null,
      rss_slope_kb: (() => {
        const s = slope(ramp);
        return s === null ? null : Number(s.toFixed(2));
      })(),
      ramp, fake, elapsed_s: Number(seconds().toFixed(3)),
    };
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  }, 500);
}

openBatch();
