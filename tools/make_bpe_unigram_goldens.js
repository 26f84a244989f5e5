#!/usr/bin/env node
/*
 * make_bpe_unigram_goldens.js - byte-level BPE and Unigram tokenizer.json
 * fixtures, trained by Hugging Face's Rust tokenizers (tools/oracle: npm
 * tokenizers 0.13.3, native 0.13.4-rc2), and the ids that library gives for
 * thousands of texts, for tests/unit/test_tokenizers.c.
 *
 * Design:
 *  - Training text: SST-2's training sentences plus the WordPiece corpus
 *    (tests/fixtures/tokenizer/corpus.json), so the hard cases' characters
 *    are in the alphabets.
 *  - bpe_roberta.json: a ByteLevel BPE in RoBERTa's layout (<s> <pad> </s>
 *    <unk>, the 256 byte characters, the merges' tokens, <mask>; ByteLevel
 *    without prefix space; RobertaProcessing), cut to its first merges so
 *    the vocabulary has 8000 entries (a prefix of BPE training is what a
 *    smaller training gives).
 *  - unigram_xlmr.json: a Unigram in XLM-RoBERTa's layout (<s> <pad> </s>
 *    <unk> first, <mask> last, unk_id 3; Sequence[Precompiled, Replace
 *    " {2,}"]; Metaspace; "<s> A </s>" / "<s> A </s> </s> B </s>"). The
 *    Precompiled map is a real sentencepiece charsmap: sentencepiece's own
 *    builder (Debian's `sentencepiece`: spm_normalize, spm_train) compiles a
 *    subset of its nmt_nfkc rules (every one-character rule, and the
 *    longer rules whose characters occur in the corpus), so the C code reads
 *    the format XLM-R ships; the full map alone would be 316 KB.
 *  - Four small variants exercise what the two main files do not:
 *    bpe_options.json (prefix space, a Sequence post-processor, added
 *    tokens with single_word / lstrip / rstrip / normalized), bpe_fallback.json
 *    (a Metaspace BPE with unk_token, fuse_unk and "<0xXX>" byte fallback,
 *    some characters removed), unigram_options.json (Strip, String and
 *    Regex Replace, no prefix space, normalized added tokens) and
 *    unigram_ties.json (integer scores: Viterbi ties everywhere).
 *  - Goldens name their texts ("c12": corpus.json[12], "d5": SST-2 dev
 *    sentence 5, "t400": SST-2 train sentence 400, "x3": corpus_extra.json[3],
 *    texts for the added tokens and normalizers) so the ids alone are
 *    committed; single texts at 512 and at 16 ids, pairs at 512 and at 19.
 *
 * Usage:
 *   apt-get install sentencepiece; (cd tools/oracle && npm install --ignore-scripts)
 *   node tools/make_bpe_unigram_goldens.js
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const tk = require(path.join(__dirname, 'oracle', 'node_modules', 'tokenizers'));
const shared = path.join(root, '..', 'shared', 'data');
const fixtures = path.join(root, 'tests', 'fixtures', 'tokenizer');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'aiserve-tok-'));

const BPE_VOCAB = 6000;
const UNIGRAM_PIECES = 4500;
const SHORT_LEN = 16;
const PAIR_SHORT_LEN = 19;

function sst(file) {
  return fs.readFileSync(path.join(shared, 'sst2', file), 'utf8').split('\n').slice(1)
    .filter((l) => l).map((l) => l.split('\t')[0]);
}
const corpus = JSON.parse(fs.readFileSync(path.join(fixtures, 'corpus.json'), 'utf8'));
const dev = sst('dev.tsv');
const train = sst('train.tsv');
// Texts for the variants' added tokens and normalizers (corpus_extra.json).
const EXTRA = [
  '<s>hello</s>', 'a <mask> b', 'a<mask>b', 'x  <mask>  y', '<mask>', ' <mask>', '<ent> <ent>x x<ent> (<ent>)',
  'New York new york  New York', 'the film  was a film-maker\'s film', 'filmfilm film', '@@ a@@ @@b @@', 'é É e\u0301',
  "``quoted'' and `` spaced ``", 'trailing spaces   ', '   leading', 'a\u3000b\u00a0c', '<unk><pad></s>', 'quiz xylophone',
  'ZZZ top', 'naïve café 中文 déjà', '\n\nnew\nlines\n', 'tabs\tand\tmore', '▁already▁metaspace', '▁', '  ', '',
  'x <ent>\u00a0y', 'é\u0301 \u00e9', 'don\'t  STOP  ', '中文 <mask>中文',
];
const text = (ref) => ({ c: corpus, x: EXTRA, d: dev, t: train })[ref[0]][Number(ref.slice(1))];

function oracleVersion() {
  const v = (p) => require(path.join(__dirname, 'oracle', 'node_modules', p, 'package.json')).version;
  return `tokenizers ${v('tokenizers')} (native ${v('tokenizers-linux-x64-gnu')})`;
}

function addedToken(content, opts = {}) {
  return { id: 0, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true, ...opts };
}

// The id fields of added_tokens are written as Rust assigns them.
function finishAdded(json) {
  const tok = tk.Tokenizer.fromString(JSON.stringify(json));
  for (const a of json.added_tokens) a.id = tok.tokenToId(a.content);
  return json;
}

// --- training ----------------------------------------------------------------
const trainFile = path.join(work, 'train.txt');
fs.writeFileSync(trainFile, train.concat(corpus).join('\n') + '\n');

function trainBpe(preTokenizer) {
  const t = new tk.Tokenizer(tk.BPE.empty());
  t.setPreTokenizer(preTokenizer);
  t.train([trainFile]);
  const file = path.join(work, 'bpe.json');
  t.save(file);
  return JSON.parse(fs.readFileSync(file, 'utf8')).model.merges;
}

// GPT-2's byte characters in its encoder's order: printable bytes, then
// the others mapped from U+0100.
function byteChars() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const chars = bs.map((b) => String.fromCodePoint(b));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) chars.push(String.fromCodePoint(256 + n++));
  return chars;
}

function robertaBpe() {
  const merges = trainBpe(tk.byteLevelPreTokenizer(false, true));
  const vocab = {};
  const add = (t) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
  ['<s>', '<pad>', '</s>', '<unk>'].forEach(add);
  byteChars().forEach(add);
  const kept = [];
  for (const m of merges) {
    if (Object.keys(vocab).length >= BPE_VOCAB - 1) break;
    const [a, b] = m.split(' ');
    kept.push(m);
    add(a + b);
  }
  add('<mask>');
  return finishAdded({
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['<s>', '<pad>', '</s>', '<unk>'].map((t) => addedToken(t, { normalized: true }))
      .concat([addedToken('<mask>', { lstrip: true })]),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'RobertaProcessing', sep: ['</s>', vocab['</s>']], cls: ['<s>', vocab['<s>']], trim_offsets: true, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, vocab, merges: kept },
  });
}

function bpeOptions(base) {
  const j = JSON.parse(JSON.stringify(base));
  const vocab = {};
  const merges = j.model.merges.slice(0, 1200);
  for (const [t, id] of Object.entries(j.model.vocab)) if (id < 4 + 256 + merges.length) vocab[t] = id;
  vocab['<mask>'] = Object.keys(vocab).length;
  j.model.vocab = vocab;
  j.model.merges = merges;
  j.model.unk_token = '<unk>';
  j.pre_tokenizer.add_prefix_space = true;
  j.post_processor = { type: 'Sequence', processors: [
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    { type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } },
        { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '</s>', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } } }] };
  j.added_tokens = [
    addedToken('<s>'), addedToken('<pad>'), addedToken('</s>'), addedToken('<unk>'),
    addedToken('<mask>', { lstrip: true, rstrip: true }),
    addedToken('<ent>', { single_word: true }),
    addedToken('New York', { special: false, normalized: true, lstrip: true }),
    addedToken('film', { special: false, normalized: true, rstrip: true }),
    addedToken('@@', { special: false, normalized: false, single_word: true }),
    addedToken('é', { special: false, normalized: true }),
  ];
  return finishAdded(j);
}

// A Metaspace BPE with unknown characters: unk_token, fuse_unk and byte
// fallback for some of the bytes.
function bpeFallback() {
  const merges = trainBpe(tk.metaspacePreTokenizer('\u2581', true)).slice(0, 1500);
  const banned = (t) => /[qxzQXZ]/.test(t) || /[^\x20-\x7e\u2581é]/.test(t);
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const add = (t) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
  // Byte pieces for é's bytes, the bytes of two CJK characters and \n.
  for (const b of [0xc3, 0xa9, 0xe4, 0xb8, 0xad, 0x96, 0x87, 0x0a, 0xe6]) add('<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>');
  for (let c = 32; c < 127; c++) if (!banned(String.fromCharCode(c))) add(String.fromCharCode(c));
  add('\u2581');
  const kept = [];
  for (const m of merges) {
    const [a, b] = m.split(' ');
    if (banned(a + b) || !(a in vocab) || !(b in vocab)) continue;
    kept.push(m);
    add(a + b);
  }
  return finishAdded({
    version: '1.0', truncation: null, padding: null,
    added_tokens: [addedToken('<unk>'), addedToken('<s>'), addedToken('</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true },
    post_processor: { type: 'BertProcessing', sep: ['</s>', 2], cls: ['<s>', 1] },
    decoder: null,
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, vocab, merges: kept },
  });
}

// sentencepiece's compiled character map for a subset of nmt_nfkc.
function charsmap() {
  const all = path.join(work, 'nmt_nfkc.tsv');
  execFileSync('spm_normalize', ['--normalization_rule_name=nmt_nfkc', '--decompile', `--output=${all}`]);
  const seen = new Set();
  for (const s of corpus.concat(dev)) for (const ch of s) seen.add(ch.codePointAt(0));
  const rules = [];
  for (const line of fs.readFileSync(all, 'utf8').split('\n')) {
    const [src, dst] = line.split('\t');
    if (!src || dst === undefined) continue;
    const cps = src.split(' ').map((h) => parseInt(h, 16));
    if (cps.length === 1 || cps.every((c) => seen.has(c))) rules.push(`${src}\t${dst}`);
  }
  const tsv = path.join(work, 'rules.tsv');
  fs.writeFileSync(tsv, rules.join('\n') + '\n');
  const sample = path.join(work, 'sample.txt');
  fs.writeFileSync(sample, dev.join('\n') + '\n');
  execFileSync('spm_train', [`--input=${sample}`, `--model_prefix=${path.join(work, 'map')}`, '--vocab_size=100',
    '--model_type=char', `--normalization_rule_tsv=${tsv}`, '--minloglevel=2']);
  // ModelProto field 3 (normalizer_spec), its field 2 (precompiled_charsmap).
  const fields = (b) => {
    const out = [];
    let i = 0;
    const varint = () => { let v = 0, s = 0, c; do { c = b[i++]; v += (c & 0x7f) * 2 ** s; s += 7; } while (c & 0x80); return v; };
    while (i < b.length) {
      const key = varint(), type = key & 7;
      if (type === 0) out.push([key >>> 3, varint()]);
      else if (type === 2) { const n = varint(); out.push([key >>> 3, b.subarray(i, i + n)]); i += n; }
      else if (type === 5) { out.push([key >>> 3, null]); i += 4; }
      else if (type === 1) { out.push([key >>> 3, null]); i += 8; }
      else throw new Error('unexpected protobuf wire type ' + type);
    }
    return out;
  };
  const spec = fields(fs.readFileSync(path.join(work, 'map.model'))).find(([f]) => f === 3)[1];
  return Buffer.from(fields(spec).find(([f]) => f === 2)[1]);
}

function trainUnigram(normalizer, prefix) {
  const t = new tk.Tokenizer(tk.Unigram.empty());
  if (normalizer) t.setNormalizer(normalizer);
  t.setPreTokenizer(tk.metaspacePreTokenizer('\u2581', prefix));
  t.train([trainFile]);
  const file = path.join(work, 'unigram.json');
  t.save(file);
  return JSON.parse(fs.readFileSync(file, 'utf8')).model.vocab;
}

// Keeps every one-character piece and the best-scored others up to `n`;
// scores rounded to 6 decimals so that every parser reads the same double.
function trimPieces(pieces, n) {
  const single = pieces.filter(([p]) => [...p].length === 1);
  const multi = pieces.filter(([p]) => [...p].length > 1).slice(0, n - single.length);
  const keep = new Set(single.concat(multi).map(([p]) => p));
  return pieces.filter(([p]) => keep.has(p)).map(([p, s]) => [p, Math.round(s * 1e6) / 1e6]);
}

function xlmrTemplate() {
  const st = (id, type) => ({ SpecialToken: { id, type_id: type } });
  const sq = (id, type) => ({ Sequence: { id, type_id: type } });
  return { type: 'TemplateProcessing', single: [st('<s>', 0), sq('A', 0), st('</s>', 0)],
    pair: [st('<s>', 0), sq('A', 0), st('</s>', 0), st('</s>', 0), sq('B', 0), st('</s>', 0)],
    special_tokens: { '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } } };
}

function xlmrUnigram(map) {
  const precompiled = { type: 'Precompiled', precompiled_charsmap: map.toString('base64') };
  const pieces = trimPieces(trainUnigram(tk.precompiled(Array.from(map)), true), UNIGRAM_PIECES)
    .filter(([p]) => !['<s>', '<pad>', '</s>', '<unk>', '<mask>'].includes(p));
  const vocab = [['<s>', 0], ['<pad>', 0], ['</s>', 0], ['<unk>', 0]].concat(pieces, [['<mask>', 0]]);
  return finishAdded({
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['<s>', '<pad>', '</s>', '<unk>'].map((t) => addedToken(t)).concat([addedToken('<mask>', { lstrip: true })]),
    normalizer: { type: 'Sequence', normalizers: [precompiled, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }] },
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true },
    post_processor: xlmrTemplate(),
    decoder: { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true },
    model: { type: 'Unigram', unk_id: 3, vocab },
  });
}

function unigramOptions() {
  const pieces = trimPieces(trainUnigram(null, false), 1500);
  const vocab = [['<s>', 0], ['<pad>', 0], ['</s>', 0], ['<unk>', 0]].concat(pieces, [['<mask>', 0]]);
  return finishAdded({
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['<s>', '<pad>', '</s>', '<unk>'].map((t) => addedToken(t)).concat([
      addedToken('<mask>', { lstrip: true, rstrip: true }),
      addedToken('New York', { special: false, normalized: true }),
      addedToken('``', { special: false, normalized: true, single_word: true }),
      addedToken('<ent>', { single_word: true, rstrip: true })]),
    normalizer: { type: 'Sequence', normalizers: [
      { type: 'Strip', strip_left: false, strip_right: true },
      { type: 'Replace', pattern: { String: "''" }, content: '"' },
      { type: 'Replace', pattern: { Regex: ' {2,}' }, content: '\u2581' }] },
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', add_prefix_space: false },
    post_processor: xlmrTemplate(),
    decoder: null,
    model: { type: 'Unigram', unk_id: 3, vocab },
  });
}

// Integer scores where a piece scores exactly the sum of its parts, so
// Viterbi meets ties everywhere (Rust keeps the first path found).
function unigramTies() {
  const vocab = [['<unk>', 0], ['\u2581', -2]];
  const seen = new Set(['<unk>', '\u2581']);
  const add = (p, score) => { if (!seen.has(p)) { seen.add(p); vocab.push([p, score]); } };
  for (const c of 'abcdefghijklmnopqrstuvwxyz') add(c, -2);
  for (const w of 'the quick brown fox jumps over the lazy dog and a film that is not bad'.split(' ')) {
    for (let i = 0; i + 2 <= w.length; i++) add(w.slice(i, i + 2), -4);
    for (let i = 0; i + 3 <= w.length; i++) add(w.slice(i, i + 3), -6);
    add('\u2581' + w, -2 * (w.length + 1));
  }
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [addedToken('<unk>')],
    normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', add_prefix_space: true },
    post_processor: null, decoder: null, model: { type: 'Unigram', unk_id: 0, vocab },
  };
}

// --- goldens -------------------------------------------------------------------
const refs = (prefix, list, every) => list.map((_, i) => prefix + i).filter((_, i) => i % every === 0);

// Writes the tokenizer (unless json is null: an existing fixture) and its goldens.
async function goldens(name, json, singles, pairs) {
  const file = path.join(fixtures, name);
  if (json) fs.writeFileSync(file, JSON.stringify(json) + '\n');
  const t = tk.Tokenizer.fromFile(file);
  const run = async (maxLength, cases, pair) => {
    t.setTruncation(maxLength);
    const out = [];
    for (const c of cases) {
      const e = pair ? await t.encode(text(c[0]), text(c[1])) : await t.encode(text(c));
      out.push(pair ? [c[0], c[1], e.getIds()] : [c, e.getIds()]);
    }
    return out;
  };
  const shortRefs = singles.filter((_, i) => i % 5 === 0);
  const shortPairs = pairs.filter((_, i) => i % 3 === 0);
  const g = {
    tokenizer: name, oracle: oracleVersion(),
    singles: { max_length: 512, cases: await run(512, singles, false) },
    short: { max_length: SHORT_LEN, cases: await run(SHORT_LEN, shortRefs, false) },
    pairs: { max_length: 512, cases: await run(512, pairs, true) },
    short_pairs: { max_length: PAIR_SHORT_LEN, cases: await run(PAIR_SHORT_LEN, shortPairs, true) },
  };
  const lines = ['{', `  "tokenizer": ${JSON.stringify(g.tokenizer)},`, `  "oracle": ${JSON.stringify(g.oracle)},`];
  const keys = ['singles', 'short', 'pairs', 'short_pairs'];
  keys.forEach((k, i) => {
    lines.push(`  "${k}": {"max_length": ${g[k].max_length}, "cases": [`);
    lines.push(g[k].cases.map((c) => '    ' + JSON.stringify(c)).join(',\n'));
    lines.push('  ]}' + (i + 1 < keys.length ? ',' : ''));
  });
  lines.push('}');
  const out = path.join(fixtures, 'expected_' + name.replace(/\.json$/, '') + '.json');
  fs.writeFileSync(out, lines.join('\n') + '\n');
  const n = g.singles.cases.length + g.short.cases.length + g.pairs.cases.length + g.short_pairs.cases.length;
  console.log(`${name}: ${fs.statSync(file).size} bytes; ${n} goldens -> ${path.basename(out)} (${fs.statSync(out).size} bytes)`);
}

async function main() {
  fs.writeFileSync(path.join(fixtures, 'corpus_extra.json'), '[\n' + EXTRA.map((s) => '  ' + JSON.stringify(s)).join(',\n') + '\n]\n');
  const extraRefs = refs('x', EXTRA, 1);

  const allCorpus = refs('c', corpus, 1);
  const mainSingles = allCorpus.concat(extraRefs, refs('d', dev, 2), refs('t', train, 100));
  const longest = 'c' + corpus.reduce((best, s, i) => (s.length > corpus[best].length ? i : best), 0);
  const mainPairs = [];
  for (let i = 0; i + 1 < dev.length; i += 6) mainPairs.push(['d' + i, 'd' + (i + 1)]);
  for (let i = 0; i < corpus.length; i += 4) mainPairs.push(['c' + i, 'd' + ((i * 7) % dev.length)]);
  mainPairs.push([longest, longest], [longest, 'd0'], ['d0', longest], ['c0', 'c0'], ['d1', 'd1']);
  const smallSingles = allCorpus.concat(extraRefs, refs('d', dev, 8));
  const smallPairs = extraRefs.map((r, i) => [r, extraRefs[(i + 5) % extraRefs.length]])
    .concat(refs('d', dev, 12).map((r, i) => [r, 'c' + ((i * 13) % corpus.length)]));

  const roberta = robertaBpe();
  await goldens('bpe_roberta.json', roberta, mainSingles, mainPairs);
  await goldens('bpe_options.json', bpeOptions(roberta), smallSingles, smallPairs);
  await goldens('bpe_fallback.json', bpeFallback(), smallSingles, smallPairs);
  await goldens('unigram_xlmr.json', xlmrUnigram(charsmap()), mainSingles, mainPairs);
  await goldens('unigram_options.json', unigramOptions(), smallSingles, smallPairs);
  await goldens('unigram_ties.json', unigramTies(), smallSingles, smallPairs);
  // WordPiece pairs through the same template code (tools/make_tokenizer_goldens.js made these files).
  // (Their single texts are test_wordpiece's; a few here keep the sets alike.)
  await goldens('small_tokenizer.json', null, extraRefs, smallPairs);
  await goldens('small_tokenizer_options.json', null, extraRefs, smallPairs);
  fs.rmSync(work, { recursive: true });
}

main().catch((e) => { console.error(e); process.exit(1); });
