#!/usr/bin/env node
/*
 * bench_ort.js - ONNX Runtime (CPU, through onnxruntime-node) on the engine
 * benchmark's cases: the peer a user would pick to serve an exported model.
 *
 *  - Session: intraOpNumThreads 2, interOpNumThreads 1, graphOptimizationLevel
 *    'all', executionMode 'sequential', the CPU execution provider.
 *  - Each case is padded to its longest sequence with the model's pad id
 *    (cases.json's meta.pad_id) and an attention mask, as a user of ORT
 *    would (a case with "batch_size", the offline run, is run as
 *    consecutive batches of that many, each padded to its own longest, and
 *    timed as a whole); GFLOP/s counts only the useful (unpadded) FLOPs from
 *    cases.json, the same count for every runtime.
 *  - The model's one output is whatever it exports: a classifier's logits,
 *    or an embedding model's sentence_embedding (mean pooling and the L2
 *    normalisation are in the graph, so session.run times them).
 *  - --name: the runtime's name in the output ("ort"; run.sh names the int8
 *    model's runs "ort-int8").
 *  - Timing: `--warmup` runs (fewer once they take `--seconds`, at least one),
 *    then runs until both `--min-runs` runs and `--seconds` have passed;
 *    median and p90 of session.run only (inputs are built once per case).
 *    One JSON line per case on stdout.
 *  - --load: process start (--t0-ns, CLOCK_REALTIME ns taken just before exec)
 *    to the first result for one sequence of 16 ids (valid in each bench
 *    model's vocabulary), and VmRSS after load and after that first inference.
 *  - --check FILE: compares the output with PyTorch's from make_bench_model.py.
 *  - --compare REF.onnx --cases cases.json: runs every case through both
 *    models (quantize_onnx.py: the int8 model against the fp32 one) and
 *    prints one JSON line: output (its name), cases, sequences,
 *    max_abs_diff, max_abs_logit (largest |value| of REF's), and
 *    same_label (argmax in common) for logits or min_cosine (the least
 *    cosine similarity of a sequence's two vectors) for embeddings.
 *  - --optimized-out FILE: writes the graph ORT runs after its optimisations
 *    (sessionOptions.optimizedModelFilePath), to see which kernels it fused.
 *
 * Usage: node bench_ort.js --model M.onnx (--cases cases.json | --load | --check F |
 *        --compare REF.onnx --cases cases.json) [--name ort] [--optimized-out F]
 *        [--seconds 2] [--min-runs 3] [--warmup 2] [--threads 2] [--t0-ns N]
 */
'use strict';

const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');

const tStartNs = realtimeNs();
const ort = require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));

function realtimeNs() {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
}

function vmRssMb() {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function parseArgs(argv) {
  const a = { seconds: 2, minRuns: 3, warmup: 2, threads: 2, t0Ns: null, name: 'ort' };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    const v = () => argv[++i];
    if (k === '--model') a.model = v();
    else if (k === '--cases') a.cases = v();
    else if (k === '--check') a.check = v();
    else if (k === '--compare') a.compare = v();
    else if (k === '--optimized-out') a.optimizedOut = v();
    else if (k === '--name') a.name = v();
    else if (k === '--load') a.load = true;
    else if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--min-runs') a.minRuns = Number(v());
    else if (k === '--warmup') a.warmup = Number(v());
    else if (k === '--threads') a.threads = Number(v());
    else if (k === '--t0-ns') a.t0Ns = BigInt(v());
    else throw new Error(`bench_ort.js: unknown argument ${k}`);
  }
  if (!a.model) throw new Error('bench_ort.js: --model is required');
  return a;
}

function sessionOptions(threads, optimizedOut) {
  const o = {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  };
  if (optimizedOut) o.optimizedModelFilePath = optimizedOut;
  return o;
}

/* Right-pads sequences of ids to the longest with padId: int64 input_ids and mask. */
function padded(seqs, padId = 0) {
  const batch = seqs.length;
  const seq = Math.max(...seqs.map((s) => s.length));
  const ids = new BigInt64Array(batch * seq).fill(BigInt(padId));
  const mask = new BigInt64Array(batch * seq);
  seqs.forEach((s, i) => {
    s.forEach((id, j) => {
      ids[i * seq + j] = BigInt(id);
      mask[i * seq + j] = 1n;
    });
  });
  return {
    input_ids: new ort.Tensor('int64', ids, [batch, seq]),
    attention_mask: new ort.Tensor('int64', mask, [batch, seq]),
  };
}

/* A case's engine calls: its sequences in batches of c.batch_size (the
 * offline run), or all of them in one, padded with padId. */
function calls(c, padId) {
  const size = c.batch_size || c.input_ids.length;
  const out = [];
  for (let i = 0; i < c.input_ids.length; i += size) out.push(padded(c.input_ids.slice(i, i + size), padId));
  return out;
}

/* cases.json: its cases and the model's pad id. */
function readCases(file) {
  const { meta, cases } = JSON.parse(fs.readFileSync(file, 'utf8'));
  return { cases, padId: meta && meta.pad_id !== undefined ? meta.pad_id : 0 };
}

async function runAll(session, feeds) {
  for (const f of feeds) await session.run(f);
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function median(sorted) {
  const n = sorted.length;
  return n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

async function benchCases(session, args) {
  const { cases, padId } = readCases(args.cases);
  for (const c of cases) {
    const feeds = calls(c, padId);
    const warm = performance.now();
    for (let i = 0; i < args.warmup; i++) {
      if (i >= 1 && performance.now() - warm >= args.seconds * 1e3) break;
      await runAll(session, feeds);
    }
    const ms = [];
    const start = performance.now();
    while (ms.length < args.minRuns || performance.now() - start < args.seconds * 1e3) {
      const t0 = performance.now();
      await runAll(session, feeds);
      ms.push(performance.now() - t0);
    }
    ms.sort((x, y) => x - y);
    const med = median(ms);
    console.log(JSON.stringify({
      runtime: args.name, case: c.name, batch: c.batch, seq: c.seq,
      ms_median: +med.toFixed(4), ms_p90: +percentile(ms, 0.9).toFixed(4),
      seqs_per_s: +(c.batch / (med / 1e3)).toFixed(2),
      gflops: +(c.useful_flops / (med / 1e3) / 1e9).toFixed(2),
      tokens: c.tokens, padded_tokens: feeds.reduce((n, f) => n + f.input_ids.size, 0),
      runs: ms.length, threads: args.threads,
    }));
  }
}

async function check(session, file) {
  const { tolerance, cases } = JSON.parse(fs.readFileSync(file, 'utf8'));
  const name = session.outputNames[0];
  let worst = 0;
  for (const c of cases) {
    const big = (a) => BigInt64Array.from(a.map(BigInt));
    const out = await session.run({
      input_ids: new ort.Tensor('int64', big(c.input_ids), [c.batch, c.seq]),
      attention_mask: new ort.Tensor('int64', big(c.attention_mask), [c.batch, c.seq]),
    });
    const got = out[name].data;
    if (!c[name] || got.length !== c[name].length) throw new Error(`bench_ort.js: ${name} shape differs`);
    c[name].forEach((want, i) => { worst = Math.max(worst, Math.abs(want - got[i])); });
  }
  const ok = worst <= tolerance;
  console.log(`bench_ort.js: ONNX Runtime vs PyTorch ${name}: max |diff| ${worst.toExponential(2)} ` +
              `over ${cases.length} batches (tolerance ${tolerance}): ${ok ? 'ok' : 'MISMATCH'}`);
  if (!ok) process.exitCode = 1;
}

/* The output of `session` against that of `ref` on every case. */
async function compare(session, ref, file) {
  const { cases, padId } = readCases(file);
  const name = session.outputNames[0];
  let maxDiff = 0, maxLogit = 0, same = 0, minCos = Infinity, sequences = 0;
  const argmax = (xs) => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0);
  const cosine = (a, b) => {
    let ab = 0, aa = 0, bb = 0;
    a.forEach((x, i) => { ab += x * b[i]; aa += x * x; bb += b[i] * b[i]; });
    return ab / Math.sqrt(aa * bb);
  };
  for (const c of cases) {
    for (const feeds of calls(c, padId)) {
      const got = (await session.run(feeds))[name];
      const want = (await ref.run(feeds))[name];
      const width = want.dims[1];
      for (let i = 0; i < want.data.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(got.data[i] - want.data[i]));
        maxLogit = Math.max(maxLogit, Math.abs(want.data[i]));
      }
      for (let s = 0; s < want.dims[0]; s++) {
        const row = (t) => Array.from(t.data.subarray(s * width, (s + 1) * width));
        if (name === 'logits') same += argmax(row(got)) === argmax(row(want));
        else minCos = Math.min(minCos, cosine(row(got), row(want)));
        sequences++;
      }
    }
  }
  const agreement = name === 'logits' ? { same_label: same } : { min_cosine: minCos };
  console.log(JSON.stringify({
    output: name, cases: cases.length, sequences, max_abs_diff: maxDiff, max_abs_logit: maxLogit, ...agreement,
  }));
}

async function main() {
  const args = parseArgs(process.argv);
  const t0Ns = args.t0Ns ?? tStartNs;
  const session = await ort.InferenceSession.create(args.model,
                                                    sessionOptions(args.threads, args.optimizedOut));
  if (args.check) return check(session, args.check);
  if (args.compare) {
    if (!args.cases) throw new Error('bench_ort.js: --compare needs --cases');
    const ref = await ort.InferenceSession.create(args.compare, sessionOptions(args.threads));
    return compare(session, ref, args.cases);
  }
  if (args.load) {
    const rssLoad = vmRssMb();
    const loadedNs = realtimeNs();
    // One short text, as a first request would be: [CLS] 14 words [SEP] in
    // DistilBERT's ids; 16 ids inside every bench model's vocabulary (the
    // values do not change the work).
    const ids = [101, ...Array.from({ length: 14 }, (_, i) => 2000 + i), 102];
    await session.run(padded([ids]));
    const firstNs = realtimeNs();
    console.log(JSON.stringify({
      runtime: args.name, case: 'load', load_ms: Number(loadedNs - t0Ns) / 1e6,
      first_inference_ms: Number(firstNs - t0Ns) / 1e6,
      rss_after_load_mb: +rssLoad.toFixed(1), rss_after_first_mb: +vmRssMb().toFixed(1),
      threads: args.threads,
    }));
    return;
  }
  if (!args.cases) throw new Error('bench_ort.js: one of --cases, --load, --check is required');
  await benchCases(session, args);
}

main().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
