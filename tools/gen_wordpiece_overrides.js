#!/usr/bin/env node
/*
 * gen_wordpiece_overrides.js - generates src/engine/wordpiece_unicode.c, the
 * table of code points where utf8proc and Hugging Face's Rust tokenizer
 * (tokenizers 0.13: Rust std, unicode_categories, unicode-normalization-
 * alignments, all with older Unicode tables) disagree.
 *
 * How: builds tools/gen_wordpiece_overrides.c (which compiles the shipped
 * wordpiece.c with the table switched off) and runs it for utf8proc's
 * answers; asks the Rust tokenizer (tools/oracle, npm) about every code point
 * 0..0x10FFFF but surrogates; writes one row per code point that differs in
 * any property, holding the Rust answer for all of them:
 *   flags  DROP (clean_text removes it), SPACE (White_Space), PUNCT
 *          (pre-tokenizer splits it off), MN (strip_accents removes it)
 *   ccc    canonical combining class, probed through NFD's reordering
 *   nfd    canonical decomposition;  lower  char::to_lowercase
 *
 * Usage: (cd tools/oracle && npm install --ignore-scripts)
 *        node tools/gen_wordpiece_overrides.js [out.c]
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const tk = require(path.join(__dirname, 'oracle', 'node_modules', 'tokenizers'));
const outPath = process.argv[2] || path.join(root, 'src', 'engine', 'wordpiece_unicode.c');

const DROP = 1, SPACE = 2, PUNCT = 4, MN = 8;
const FLAG_NAMES = { [DROP]: 'DROP', [SPACE]: 'SPACE', [PUNCT]: 'PUNCT', [MN]: 'MN' };

// --- utf8proc's view, from the shipped C code -------------------------------
function probe() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wpprobe-'));
  const exe = path.join(dir, 'probe');
  execFileSync('cc', ['-std=c17', '-O2', '-I', path.join(root, 'src', 'engine'),
    path.join(__dirname, 'gen_wordpiece_overrides.c'), path.join(root, 'src', 'engine', 'error.c'),
    '-lutf8proc', '-ljansson', '-o', exe], { stdio: 'inherit' });
  const text = execFileSync(exe, { maxBuffer: 1 << 30 }).toString();
  fs.rmSync(dir, { recursive: true });
  const map = new Map();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [cp, flags, ccc, nfd, lower] = line.split(' ');
    map.set(parseInt(cp, 16), {
      flags: parseInt(flags, 16), ccc: parseInt(ccc, 16),
      nfd: nfd.split(',').map((x) => parseInt(x, 16)), lower: lower.split(',').map((x) => parseInt(x, 16)),
    });
  }
  return map;
}

function rawOf(raw, cp) {
  return raw.get(cp) || { flags: 0, ccc: 0, nfd: [cp], lower: [cp] };
}

// --- the Rust tokenizer's view ----------------------------------------------
const clean = tk.bertNormalizer({ cleanText: true, handleChineseChars: false, stripAccents: false, lowercase: false });
// BertNormalizer's strip_accents is NFD then unicode_categories'
// is_mark_nonspacing (the StripAccents normalizer uses another test).
const strip = tk.bertNormalizer({ cleanText: false, handleChineseChars: false, stripAccents: true, lowercase: false });
const nfd = tk.nfdNormalizer();
const lower = tk.lowercase();
const pre = tk.bertPreTokenizer();
const cps = (s) => Array.from(s, (c) => c.codePointAt(0));

// MN is probed only on code points that NFD leaves alone: the filter sees
// NFD's output, never a character that decomposes.
function oracleFlags(cp, raw) {
  const c = String.fromCodePoint(cp);
  let f = 0;
  if (clean.normalizeString(c) === '') f |= DROP;
  const words = pre.preTokenizeString('a' + c + 'a').map((w) => w[0]);
  if (words.length === 2 && words[0] === 'a' && words[1] === 'a') f |= SPACE;
  else if (words.length === 3 && words[1] === c) f |= PUNCT;
  else if (!(words.length === 1 && words[0] === 'a' + c + 'a')) throw new Error(`pre-tokenizer on U+${cp.toString(16)}: ${JSON.stringify(words)}`);
  const decomposes = nfd.normalizeString(c) !== c;
  if (decomposes ? (raw.flags & MN) : strip.normalizeString(c) === '') f |= MN;
  return f;
}

// NFD reorders a mark x after a mark r when ccc(x) < ccc(r), both non-zero:
// comparing x with marks of known class pins down x's class in the oracle.
function makeCccProbe(raw) {
  const byClass = new Map(); // ccc -> lowest code point with it (old, stable)
  for (const [cp, r] of raw) if (r.ccc && !byClass.has(r.ccc) && r.nfd.length === 1) byClass.set(r.ccc, cp);
  const swaps = (a, b) => { // does NFD(a b) put b first?
    const out = cps(nfd.normalizeString(String.fromCodePoint(a, b)));
    return out.length === 2 && out[0] === b && out[1] === a;
  };
  // Keep only representatives the oracle orders as utf8proc does: drop the
  // one with the most disagreements until none disagree.
  let reps = [...byClass.entries()].sort((x, y) => x[0] - y[0]);
  for (;;) {
    const bad = reps.map(([k, r]) => reps.filter(([k2, r2]) => r2 !== r && swaps(r, r2) !== (k > k2)).length);
    const worst = bad.indexOf(Math.max(...bad));
    if (bad[worst] === 0) break;
    reps.splice(worst, 1);
  }
  return (cp) => {
    let lo = 0, hi = 256, equal = null;
    for (const [k, r] of reps) {
      if (r === cp) { equal = k; continue; }
      if (swaps(cp, r)) lo = Math.max(lo, k + 1);      // ccc(cp) > k
      else if (swaps(r, cp)) hi = Math.min(hi, k);     // 0 < ccc(cp) < k
      else if (equal === null) equal = k;              // ccc(cp) == k or 0
    }
    if (lo === 0 && hi === 256) return 0;              // reorders with nothing: a starter
    if (equal !== null && equal >= lo && equal < hi) return equal;
    return { lo, hi };                                 // caller decides
  };
}

function eqArr(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function main() {
  const raw = probe();
  const cccOf = makeCccProbe(raw);
  const rows = [];
  const stats = {};
  const bump = (k) => { stats[k] = (stats[k] || 0) + 1; };
  for (let cp = 0; cp <= 0x10ffff; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const r = rawOf(raw, cp);
    const c = String.fromCodePoint(cp);
    const o = { flags: oracleFlags(cp, r), nfd: cps(nfd.normalizeString(c)), lower: cps(lower.normalizeString(c)), ccc: 0 };
    // The class matters only for what NFD outputs, so only for code points
    // that decompose to themselves.
    if (r.ccc && !(o.nfd.length === 1 && o.nfd[0] === cp)) {
      o.ccc = r.ccc;
    } else if (r.ccc) {
      const k = cccOf(cp);
      o.ccc = typeof k === 'number' ? k : (r.ccc >= k.lo && r.ccc < k.hi ? r.ccc : k.lo);
    }
    const why = [];
    for (const bit of [DROP, SPACE, PUNCT, MN]) {
      if ((o.flags & bit) !== (r.flags & bit)) why.push(((o.flags & bit) ? '+' : '-') + FLAG_NAMES[bit]);
    }
    if (o.ccc !== r.ccc) why.push(`ccc ${r.ccc}->${o.ccc}`);
    if (!eqArr(o.nfd, r.nfd)) why.push('NFD');
    if (!eqArr(o.lower, r.lower)) why.push('lower');
    if (!why.length) continue;
    if (cp < 0x80) throw new Error(`ASCII U+${cp.toString(16)} differs (${why}); the fast path assumes not`);
    why.forEach((w) => bump(w.replace(/ .*/, '')));
    rows.push({ cp, o, why });
  }
  writeTable(rows, stats);
  console.log(`${rows.length} overrides -> ${path.relative(root, outPath)}`);
  console.log(stats);
}

function hex(n, w = 4) {
  return '0x' + n.toString(16).toUpperCase().padStart(w, '0');
}

function writeTable(rows, stats) {
  const seq = [];
  const seqIndex = new Map();
  const pack = (s) => {
    const key = s.join(',');
    if (!seqIndex.has(key)) { seqIndex.set(key, seq.length); seq.push(...s); }
    return (seqIndex.get(key) << 8) | s.length;
  };
  const lines = rows.map(({ cp, o, why }) =>
    `    {${hex(cp, 5)}, ${hex(o.flags | (o.ccc << 8), 3)}, ${hex(pack(o.nfd), 6)}, ${hex(pack(o.lower), 6)}}, /* ${why.join(' ')} */`);
  const summary = Object.entries(stats).sort().map(([k, v]) => ` *   ${k.padEnd(7)} ${v}`).join('\n');
  const seqLines = [];
  for (let i = 0; i < seq.length; i += 8) seqLines.push('    ' + seq.slice(i, i + 8).map((x) => hex(x, 4)).join(', ') + ',');
  const pkg = require(path.join(__dirname, 'oracle', 'node_modules', 'tokenizers', 'package.json'));
  const nat = require(path.join(__dirname, 'oracle', 'node_modules', 'tokenizers-linux-x64-gnu', 'package.json'));
  const text = `/*
 * wordpiece_unicode.c - GENERATED by tools/gen_wordpiece_overrides.js; do not edit.
 *
 * Code points where utf8proc ${utf8procVersion()} and the Rust tokenizer
 * (npm tokenizers ${pkg.version}, native ${nat.version}) disagree about a property
 * the WordPiece normalizer or pre-tokenizer uses. A row holds the Rust
 * answers for all properties of its code point (layout in wordpiece.c).
 * Each comment names what differs: +X/-X a flag the oracle sets/clears
 * (DROP cleaned away, SPACE whitespace, PUNCT split off, MN dropped by
 * strip_accents), ccc a->b, NFD, lower. Counts by difference:
${summary}
 */
#include <stddef.h>
#include <stdint.h>

const uint32_t wordpiece_uovr[][4] = {
${lines.join('\n')}
    {0x110000, 0x000, 0x000000, 0x000000}, /* sentinel */
};

const size_t wordpiece_n_uovr = ${rows.length};

const uint32_t wordpiece_uovr_seq[] = {
${seqLines.join('\n')}
    0,
};
`;
  fs.writeFileSync(outPath, text);
}

function utf8procVersion() {
  const h = fs.readFileSync('/usr/include/utf8proc.h', 'utf8');
  const v = (n) => (h.match(new RegExp(`#define UTF8PROC_VERSION_${n} (\\d+)`)) || [])[1];
  return `${v('MAJOR')}.${v('MINOR')}.${v('PATCH')}`;
}

main();
