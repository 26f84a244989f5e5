#!/usr/bin/env node
/*
 * make_tokenizer_goldens.js - golden token ids for the C WordPiece tokenizer,
 * computed by Hugging Face's Rust tokenizer (tools/oracle: npm tokenizers
 * 0.13.3 with its native build 0.13.4-rc2).
 *
 * Design:
 *  - The BERT tokenizers are built in the standard tokenizer.json layout
 *    (BertNormalizer, BertPreTokenizer, WordPiece, TemplateProcessing
 *    "[CLS] $A [SEP]", the five special tokens as added tokens) from the
 *    shared vocab.txt files; those files are not committed (700 KB each).
 *  - Goldens: the ids of every corpus string truncated at 512, and of every
 *    SHORT_EVERY-th string truncated at 16.
 *  - Two small tokenizer.json files (a few hundred tokens) are written next
 *    to the goldens so that the C tests can load JSON without the big vocab:
 *    one in the standard layout, one exercising the other options
 *    (BertProcessing, explicit strip_accents, no cleaning/CJK, a custom unk
 *    and max_input_chars_per_word, normalized and raw added tokens).
 *
 * Usage:
 *   (cd tools/oracle && npm install --ignore-scripts)
 *   node tools/make_tokenizer_goldens.js --corpus   # rewrite corpus.json
 *   node tools/make_tokenizer_goldens.js            # rewrite the goldens
 */
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const tk = require(path.join(__dirname, 'oracle', 'node_modules', 'tokenizers'));
const shared = path.join(root, '..', 'shared', 'data');
const fixtures = path.join(root, 'tests', 'fixtures', 'tokenizer');
const SHORT_LEN = 16;
const SHORT_EVERY = 7;

const SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];

function addedToken(id, content, special, normalized) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized, special };
}

// The layout transformers writes for BertTokenizerFast.
function bertJson(vocab, lowercase) {
  const id = (t) => vocab[t];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.filter((t) => t in vocab).map((t) => addedToken(id(t), t, true, false)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '[SEP]', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } },
        { SpecialToken: { id: '[SEP]', type_id: 1 } }],
      special_tokens: {
        '[CLS]': { id: '[CLS]', ids: [id('[CLS]')], tokens: ['[CLS]'] },
        '[SEP]': { id: '[SEP]', ids: [id('[SEP]')], tokens: ['[SEP]'] },
      },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  };
}

// vocab.txt as HF reads it: id = line number, a later duplicate wins.
function readVocab(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const vocab = {};
  lines.forEach((t, i) => { vocab[t.replace(/\r$/, '')] = i; });
  return vocab;
}

async function encodeAll(tokenizer, texts, maxLength) {
  tokenizer.setTruncation(maxLength);
  const out = [];
  for (const t of texts) out.push((await tokenizer.encode(t)).getIds());
  return out;
}

async function goldens(tokenizer, texts, meta) {
  const ids = await encodeAll(tokenizer, texts, 512);
  const shortIdx = texts.map((_, i) => i).filter((i) => i % SHORT_EVERY === 0 || ids[i].length > 512 - 1);
  const short = await encodeAll(tokenizer, shortIdx.map((i) => texts[i]), SHORT_LEN);
  return { ...meta, oracle: oracleVersion(), max_length: 512, ids,
    short: { max_length: SHORT_LEN, cases: shortIdx.map((i, k) => [i, short[k]]) } };
}

function oracleVersion() {
  const v = (p) => require(path.join(__dirname, 'oracle', 'node_modules', p, 'package.json')).version;
  return `tokenizers ${v('tokenizers')} (native ${v('tokenizers-linux-x64-gnu')})`;
}

// Compact JSON: one golden per line keeps diffs readable and files small.
function writeGoldens(file, g) {
  const lines = ['{'];
  for (const k of Object.keys(g)) {
    if (k === 'ids') {
      lines.push(`  "ids": [\n${g.ids.map((a) => '    ' + JSON.stringify(a)).join(',\n')}\n  ],`);
    } else if (k === 'short') {
      lines.push(`  "short": {"max_length": ${g.short.max_length}, "cases": [\n${g.short.cases.map((c) => '    ' + JSON.stringify(c)).join(',\n')}\n  ]}`);
    } else {
      lines.push(`  ${JSON.stringify(k)}: ${JSON.stringify(g[k])},`);
    }
  }
  lines.push('}\n');
  fs.writeFileSync(file, lines.join('\n'));
}

// --- small tokenizer.json files --------------------------------------------
function smallVocab() {
  const keep = [...SPECIALS];
  const printable = [];
  for (let c = 33; c < 127; c++) printable.push(String.fromCharCode(c));
  // Characters and continuations, minus a few so that some words are [UNK].
  for (const c of printable) if (!'QXZqxz'.includes(c)) keep.push(c);
  for (const c of 'abcdefghijklmnoprstuvwy0123456789') keep.push('##' + c);
  keep.push(...'the of and to in is it that was for on with as film movie story good bad not but'.split(' '));
  keep.push(...'##s ##ed ##ing ##ly ##er ##est ##tion ##ness un re pre ##able'.split(' '));
  keep.push(...'é ##é ü 中 文 日 本 語 ह ##ि ##न ##्द ##ी σ ς α ##α Σ ##σ'.split(' '));
  keep.push('hello', 'world', '##llo', 'new', 'york');
  const vocab = {};
  keep.forEach((t) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; });
  return vocab;
}

function smallJsonStandard() {
  return bertJson(smallVocab(), true);
}

function smallJsonOptions() {
  const vocab = smallVocab();
  const j = bertJson(vocab, false);
  j.normalizer = { type: 'BertNormalizer', clean_text: false, handle_chinese_chars: false, strip_accents: true, lowercase: false };
  j.post_processor = { type: 'BertProcessing', sep: ['[SEP]', vocab['[SEP]']], cls: ['[CLS]', vocab['[CLS]']] };
  j.model.max_input_chars_per_word = 12;
  const n = Object.keys(vocab).length;
  j.added_tokens.push(addedToken(n, 'New York', false, true), addedToken(n + 1, '<ent>', true, false),
    addedToken(vocab.film, 'Film', false, true));
  return j;
}

const SMALL_TEXTS = [
  'Hello World, hello world!', 'The film was good.', 'New York and new york and NEW YORK', 'an <ent> here<ent>there',
  'Film film FILM', 'unbelievable storytelling', 'quixotic zebra', 'café Über naïve', '中文日本語', 'हिन्दी',
  'ΣΊΣΥΦΟΣ σς', '[CLS] [MASK] [SEP]', 'a\tb\nc\u000bd', 'a\u0000b', '\u200bzero', 'aaaaaaaaaaaaa b', 'ééééééééééééé',
  '', '   ', 'x'.repeat(200),
];

async function small(name, json) {
  const file = path.join(fixtures, name);
  const tokenizer = tk.Tokenizer.fromString(JSON.stringify(json));
  tokenizer.save(file, false); // the oracle's own serialization of it
  const reloaded = tk.Tokenizer.fromFile(file);
  const ids = await encodeAll(reloaded, SMALL_TEXTS, 512);
  const short = await encodeAll(reloaded, SMALL_TEXTS, 6);
  return { file: name, texts: SMALL_TEXTS, max_length: 512, ids, short: { max_length: 6, ids: short } };
}

// --- the corpus -------------------------------------------------------------
function makeCorpus() {
  const hand = [
    // empty and whitespace
    '', ' ', '   ', '\t', '\n', '\t\n\r ', '  \n\n  \t ', '\u3000', '\u00a0', '\u2003\u2002', ' leading', 'trailing ',
    // plain English
    'Hello, world!', 'The quick brown fox jumps over the lazy dog.', "I can't believe it's not butter!!!",
    "don't won't shouldn't y'all", 'iPhone 15 Pro Max', 'COVID-19 pandemic', 'C++ and C# and F#', 'Mr. Smith\'s 2nd-place finish',
    'UPPER lower MiXeD CaSe', 'unaffable unbelievably antidisestablishmentarianism', 'tokenization tokenizer tokenized',
    // numbers
    '3.14159', '1,000,000', '2023-11-27T08:52:00Z', '$19.99 + €5 = £24.99', '100% sure', '1st 2nd 3rd 4th', '0x1F 0b1010',
    '١٢٣ ٤٥٦', '①②③ ⑩', '½ ¾ ⅞', '10^6 × 2 ÷ 3 ≠ 4', '12:30pm', '+1 (555) 123-4567',
    // URLs, code, markup
    'https://www.example.com/path/to/page?query=1&x=y#frag', 'http://127.0.0.1:8080/', 'e-mail: john.doe@example.com',
    '#hashtag @mention', '<html><body>text</body></html>', '{"json": [1, 2, 3], "k": null}',
    "SELECT * FROM t WHERE x = 'y';", 'int main() { return 0; }', '**bold** _it_ `code`', 'a/b\\c|d~e^f',
    // punctuation runs
    '!!!???...', '--==--', '((()))[[]]{{}}', '"quoted" \'single\' `back`', '«guillemets» „low“ ‘curly’ “double”',
    '¿Qué? ¡Sí!', '…', '— – ‐ -', '•·※', '§¶†‡', '、。〃〈〉《》「」', '٪ ؟ ، ؛', '।॥', '·', '¡¿', '‰‱', '⁂⁎',
    '_underscore_', '~tilde~', '@#$%^&*', '…and then', '...', 'a.b.c.d', 'end.', '!', '?!',
    // accents and case
    'café', 'naïve résumé', 'Ångström', 'Crème brûlée', 'Zürich Straße', 'São Paulo', 'Đà Nẵng', 'façade piñata',
    'Søren Kierkegaard', 'Łódź', 'ÉCOLE', 'ÀÉÎÕÜ', 'Tiếng Việt có dấu', 'ǅ ǈ ǋ', 'ﬁ ﬂ ligatures', 'Ⅻ ℌ µ', 'ß ẞ',
    'ΆΈΉ', 'Ⓐⓑ', '\u212a\u2126\u212b', 'Ǆemal', 'Æsir œuvre', 'ŉ', 'ǰ', 'ﬀ',
    // combining marks
    'e\u0301', 'a\u0300\u0301\u0302', 'n\u0303o', 'Z\u0351\u0346a\u036b\u0313l\u0310g\u034co', 'a\u0316\u0301', 'a\u0301\u0316',
    '\u0301', 'x\u20dd', 'q\u0307\u0323', '\u0344', 'a\u0345\u0301', 'o\u031b\u0323\u0300', 'e' + '\u0301'.repeat(40),
    'a\u0488b', 'ग\u0903', 'd\u0334\u0301\u0316', 'a\u0315\u031b',
    // CJK, Japanese, Korean
    '中文分词测试', '我爱北京天安门', '汉字漢字', '日本語のテキスト', '東京タワー', 'カタカナ ひらがな', '한국어 텍스트', '안녕하세요',
    '𠀀𠀁', '\uf900\uf901\ufa6a', '㐀㐁', '𪜀', '〇', 'CJK标点：，。！？', '中文English混合mixed', 'ＡＢＣ１２３',
    '\u2f800\u{2f800}', '⺀⼀', 'ｶﾀｶﾅ', 'ｱｲｳ', '\u{2b820}\u{2ceb0}\u{30000}', '\u{2a6df}\u{2a6e0}',
    // emoji
    '😀', 'I love 🍕!', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '❤️', '🇺🇸🇫🇷', '1️⃣', '🤷🏻‍♂️', '☃ ☺ ✓', '©®™',
    // control and invisible characters
    'a\u0000b', '\u0000', 'hello\u0000world', 'a\u0001b\u0002c', 'tab\there', 'new\nline', 'cr\rlf', '\u000b\u000c',
    'a\u000bb', 'a\u000cb', '\u007f', 'a\u007fb', 'a\u0085b', '\u001c\u001d\u001e\u001f', 'a\u001fb', '\ufffd',
    'bad\ufffdchar', '\u200b zero width', 'a\u200bb', 'a\u200cb\u200dc', '\ufeffBOM', 'soft\u00adhyphen', 'a\u2028b\u2029c',
    'word\u2060joiner', '\ue000private', 'x\u{f0000}y', '\u{e0001}tag\u{e007f}', 'un\u0378assigned', 'max\u{10ffff}',
    '\u{1f000}', 'a\u2003b', 'a\u3000b', 'a\u00a0b', 'a\u1680b', 'a\u180eb', 'a\u202fb', 'a\u2066b\u2069', 'a\u061cb',
    'a\u0890b', '\u{13430}x', 'a\u0600b', 'a\u{110bd}b',
    // scripts
    'مرحبا بالعالم', 'مَرْحَبًا', 'العربية؟', 'שָׁלוֹם עולם', 'नमस्ते दुनिया', 'हिन्दी', 'สวัสดีครับ', 'Привет, мир!', 'ЁЖИК',
    'ΣΊΣΥΦΟΣ', 'Σ', 'ΟΔΥΣΣΕΥΣ', 'ὈΔΥΣΣΕΎΣ', 'σς', 'ΑΣ.', 'İstanbul', 'İİİ', 'ıI', 'DİYARBAKIR', 'i̇', 'Բարեւ',
    'გამარჯობა', 'ሰላም', 'வணக்கம்', 'বাংলা', 'ភាសាខ្មែរ', 'བོད་ཡིག', 'မြန်မာ', 'සිංහල', 'ᏣᎳᎩ ꭰ', '𐐀𐐨', '𞤀𞤢', '𐒰𐓘',
    '𐕰𐖗', 'ᠮᠣᠩᠭᠣᠯ', 'Ⰰⰰ', 'ꙮ', '𓀀𓁐', 'ᚠᚢᚦ', 'ꦗꦮ', '\u1715', 'a\u0d81b', '\u{11f00}\u{11f41}',
    // long words
    'a'.repeat(100), 'a'.repeat(101), 'pneumonoultramicroscopicsilicovolcanoconiosis',
    'supercalifragilisticexpialidocious'.repeat(3), 'é'.repeat(101), 'é'.repeat(60), 'x'.repeat(99) + 'é',
    'ab-'.repeat(60), '中'.repeat(150), 'q'.repeat(2000), 'e\u0301'.repeat(60), 'word ' + 'z'.repeat(300) + ' word',
    // special tokens written in the text
    '[CLS] hello [SEP]', '[MASK]', '[UNK]', '[PAD][PAD]', '[cls] lowercase', '[CLS][SEP][MASK]', 'x[MASK]y', '[[SEP]]',
    '[ SEP ]', '[MASK]ing', 'the [MASK] sat on the mat', '[SEP', 'SEP]', '[unused0]',
  ];
  // A text well over 512 tokens.
  const para = 'The film, which premiered at Cannes in 2019, follows a family of four through an ordinary summer; ' +
    'critics called it "quietly devastating" and praised its naturalistic performances. ';
  hand.push(para.repeat(25));
  // Real sentences: every fifth row of the SST-2 dev set.
  const dev = fs.readFileSync(path.join(shared, 'sst2', 'dev.tsv'), 'utf8').split('\n').slice(1)
    .filter((l) => l).map((l) => l.split('\t')[0]);
  const sst = dev.filter((_, i) => i % 5 === 0).slice(0, 150);
  // The dev set's few non-ASCII sentences are worth having too.
  for (const s of dev) if (/[^\x00-\x7f]/.test(s) && !sst.includes(s)) sst.push(s);
  return hand.concat(sst);
}

async function main() {
  fs.mkdirSync(fixtures, { recursive: true });
  const corpusFile = path.join(fixtures, 'corpus.json');
  if (process.argv.includes('--corpus')) {
    const corpus = makeCorpus();
    fs.writeFileSync(corpusFile, '[\n' + corpus.map((s) => '  ' + JSON.stringify(s)).join(',\n') + '\n]\n');
    console.log(`${corpus.length} strings -> ${path.relative(root, corpusFile)}`);
  }
  const corpus = JSON.parse(fs.readFileSync(corpusFile, 'utf8'));
  for (const [name, vocabFile, lower] of [['expected_uncased.json', 'bert-base-uncased-vocab.txt', true],
    ['expected_cased.json', 'bert-base-cased-vocab.txt', false]]) {
    const json = bertJson(readVocab(path.join(shared, vocabFile)), lower);
    const tokenizer = tk.Tokenizer.fromString(JSON.stringify(json));
    const g = await goldens(tokenizer, corpus, { vocab: vocabFile, lowercase: lower });
    writeGoldens(path.join(fixtures, name), g);
    console.log(`${corpus.length} goldens -> ${name}`);
  }
  const smalls = [await small('small_tokenizer.json', smallJsonStandard()),
    await small('small_tokenizer_options.json', smallJsonOptions())];
  fs.writeFileSync(path.join(fixtures, 'expected_small.json'), JSON.stringify(smalls, null, 1) + '\n');
  console.log('small tokenizers -> small_tokenizer*.json, expected_small.json');
}

main().catch((e) => { console.error(e); process.exit(1); });
