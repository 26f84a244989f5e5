#!/usr/bin/env bash
# run.sh BUILD_DIR - the engine benchmark: aiserve's C engine (fp32, bf16 and
# int8) side by side with ONNX Runtime (onnxruntime-node; the fp32 export and
# its int8 quantisation) and PyTorch eager on the same checkpoints and the
# same inputs, plus OpenBLAS's SGEMM ceiling. The checkpoints (BENCH_MODELS):
# distilbert-base and roberta-base (classifiers) and mpnet-base (an
# embedding model), each a real hub model's shape with random weights.
#
#  - Makes what is missing: bench/engine/node_modules (npm ci, with
#    ONNXRUNTIME_NODE_INSTALL=skip: the CPU library ships in the package);
#    for each model its checkpoint and ONNX export (tools/make_bench_model.py
#    --model, which checks ORT's output against PyTorch's), its cases
#    (make_cases.py) and its int8 ONNX model (quantize_onnx.py, which checks
#    that ORT runs and fuses it and how far its output is from fp32's); and
#    the bench_gemm / bench_peak / bench_engine binaries in BUILD_DIR.
#  - Runs every runtime one after another, never two at once, each with the
#    same thread count (BENCH_THREADS, default 2): OpenBLAS's SGEMM and bench_peak once, then
#    model after model: BENCH_ROUNDS rounds of ort, ort-int8, aiserve,
#    aiserve-bf16, aiserve-int8 (each round starting one runtime later, so
#    that none always runs first), then PyTorch once, then the load runs.
#    The report takes each case's median over the rounds.
#  - Prints one section of tables per model and writes
#    bench/engine/work/results-<date>.json.
#
# Environment: BENCH_MODELS (space-separated; "distilbert-base roberta-base
# mpnet-base"), BENCH_THREADS (2), BENCH_SECONDS per case (2), BENCH_MIN_RUNS
# per case (3), BENCH_ROUNDS (1), BENCH_LOAD_RUNS (3), BENCH_MODES (aiserve's
# quantization modes: "none bf16 int8"), BENCH_CASES (space-separated case
# names, e.g. "b1_s16 b8_s64": only those; default all), BENCH_SKIP
# (space-separated subset of "gemm ort ort-int8 pytorch aiserve load
# tokenizer"; "ort" skips both ORT models, "aiserve" every mode).
# A benchmark, not a test: it never fails on a number. A runtime that fails
# to run is reported on stderr and left out of the table.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
HERE="$ROOT/bench/engine"
WORK="$HERE/work"
PY=/usr/bin/python3
THREADS=${BENCH_THREADS:-2}
SECS=${BENCH_SECONDS:-2}
MIN_RUNS=${BENCH_MIN_RUNS:-3}
LOAD_RUNS=${BENCH_LOAD_RUNS:-3}
ROUNDS=${BENCH_ROUNDS:-1}
MODES=${BENCH_MODES:-none bf16 int8}
MODELS=${BENCH_MODELS:-distilbert-base roberta-base mpnet-base}
SKIP=" ${BENCH_SKIP:-} "
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$WORK/raw-$STAMP.jsonl"
META="$WORK/meta-$STAMP.json"
OUT="$WORK/results-$STAMP.json"

log() { echo "run.sh: $*" >&2; }
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
mkdir -p "$WORK"
cd "$ROOT"
: >"$RAW"

# A model's files, as make_bench_model.py names them (DistilBERT's cases keep
# their first name, cases.json). RUN_CASES is what the runtimes get: the
# cases file, or with BENCH_CASES this run's copy holding only those cases.
model_files() {  # model
  MODEL_DIR="$WORK/$1"
  ONNX="$WORK/$1.onnx"
  ONNX_INT8="$WORK/$1-int8.onnx"
  if [[ "$1" == distilbert-base ]]; then CASES="$WORK/cases.json"; else CASES="$WORK/cases-$1.json"; fi
  RUN_CASES=$CASES
  if [[ -n "${BENCH_CASES:-}" ]]; then RUN_CASES="$WORK/run-$STAMP-cases-$1.json"; fi
}

# --- what the run needs ------------------------------------------------------
if ! skipped ort && [[ ! -d "$HERE/node_modules/onnxruntime-node" ]]; then
  log "installing onnxruntime-node (npm ci)"
  (cd "$HERE" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >&2)
fi
no_ort_int8=" "  # the models whose int8 ONNX model failed its check
for model in $MODELS; do
  model_files "$model"
  "$PY" tools/make_bench_model.py --model "$model" --out "$WORK" >&2
  "$PY" "$HERE/make_cases.py" "$MODEL_DIR" "$CASES" >&2
  if [[ -n "${BENCH_CASES:-}" ]]; then
    "$PY" - "$CASES" "$RUN_CASES" "$BENCH_CASES" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["cases"] = [c for c in doc["cases"] if c["name"] in sys.argv[3].split()]
if not doc["cases"]:
    sys.exit(f"run.sh: BENCH_CASES names none of the cases in {sys.argv[1]}")
json.dump(doc, open(sys.argv[2], "w"))
EOF
  fi
  if ! skipped ort && ! skipped ort-int8; then
    # Rewrites the int8 model when the fp32 export is newer; checks it every
    # run. The check's line goes into the results under the model's name.
    if check=$("$PY" "$HERE/quantize_onnx.py" "$ONNX" "$ONNX_INT8" --cases "$RUN_CASES" --json); then
      echo "{\"info\":\"ort_int8_model\",\"model\":\"$model\",${check#\{}" >>"$RAW"
    else
      log "quantize_onnx.py failed: ORT int8 is left out of this run for $model"
      no_ort_int8+="$model "
    fi
  fi
done

if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >&2
fi
have_engine=1
cmake --build "$BUILD" --target bench_gemm bench_peak -j "$(nproc)" >&2
if ! skipped aiserve || ! skipped load; then
  if ! cmake --build "$BUILD" --target bench_engine -j "$(nproc)" >&2; then
    log "bench_engine does not build: the aiserve engine is left out of this run"
    have_engine=0
  fi
fi
BENCH_ENGINE="$BUILD/bench/engine/bench_engine"
BENCH_GEMM="$BUILD/bench/engine/bench_gemm"
BENCH_PEAK="$BUILD/bench/engine/bench_peak"
BENCH_TOKENIZER=""
if ! skipped tokenizer && cmake --build "$BUILD" --target bench_tokenizer -j "$(nproc)" >&2; then
  BENCH_TOKENIZER="$BUILD/bench/engine/bench_tokenizer"
fi

# --- metadata ----------------------------------------------------------------
meta_models=()  # name, cases file; ...
for model in $MODELS; do model_files "$model"; meta_models+=("$model" "$CASES"); done
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cpu_family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
cpu_modelno=$(lscpu | sed -n 's/^Model: *//p' | head -1)
ort_version=$(node -p "require('$HERE/node_modules/onnxruntime-node/package.json').version" 2>/dev/null || echo none)
torch_version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
BENCH_META_DATE=$STAMP BENCH_META_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) \
BENCH_META_DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo 1 || echo 0) \
BENCH_META_CPU="$cpu_model (family $cpu_family model $cpu_modelno)" \
BENCH_META_ORT=$ort_version BENCH_META_TORCH=$torch_version \
BENCH_META_THREADS=$THREADS BENCH_META_SECS=$SECS BENCH_META_MIN_RUNS=$MIN_RUNS \
BENCH_META_ROUNDS=$ROUNDS \
"$PY" - "$META" "${meta_models[@]}" <<'EOF'
import json, os, platform, sys
e = os.environ
flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
meta = {
    "date": e["BENCH_META_DATE"], "git_revision": e["BENCH_META_REV"],
    "git_dirty": e["BENCH_META_DIRTY"] == "1", "cpu_model": e["BENCH_META_CPU"],
    "n_cpus": os.cpu_count(), "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                       "avx512_vnni") if f in flags],
    "kernel": platform.release(), "loadavg_at_start": os.getloadavg(),
    "threads": int(e["BENCH_META_THREADS"]), "rounds": int(e["BENCH_META_ROUNDS"]),
    "timing": {"seconds_per_case": float(e["BENCH_META_SECS"]),
               "min_runs": int(e["BENCH_META_MIN_RUNS"]), "warmup_runs": 2},
    "versions": {"onnxruntime-node": e["BENCH_META_ORT"], "torch": e["BENCH_META_TORCH"],
                 "node": os.popen("node --version").read().strip()},
    "env": {k: e.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                  "OMP_NUM_THREADS", "OPENBLAS_L2_SIZE")},
    # Each model as its cases file describes it (make_cases.py's meta).
    "models": [],
}
for name, cases in zip(sys.argv[2::2], sys.argv[3::2]):
    m = json.load(open(cases))["meta"]
    meta["models"].append({
        "name": name, "cases_file": os.path.basename(cases),
        "description": f"{name}: {m['architecture']} ({m['task']}), random weights, F32, "
                       f"{m['n_params']:,} parameters, tokenizer {m['tokenizer']}",
        **{k: m[k] for k in ("architecture", "task", "labels", "tokenizer", "n_params", "config", "pad_id")}})
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

# --- runs, one at a time -----------------------------------------------------
# Other work on the machine skews every number. Each part starts with a mark
# of the machine's busy CPU time (/proc/stat) and this script's children's
# (/proc/$$/stat cutime + cstime), so report.py can tell how much CPU other
# processes took while each part ran.
note_load() {
  local busy steal self
  read -r busy steal < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $9}' /proc/stat)
  self=$(awk '{print $16 + $17}' /proc/$$/stat)
  echo "{\"info\":\"cpu\",\"mark\":\"$1\",\"t\":$(date +%s.%N),\"busy\":$busy,\"steal\":$steal,\"self\":$self,\"hz\":$(getconf CLK_TCK),\"ncpu\":$(nproc)}" >>"$RAW"
}
timing=(--seconds "$SECS" --min-runs "$MIN_RUNS" --warmup 2 --threads "$THREADS")

if ! skipped gemm; then
  log "OpenBLAS sgemm peak (threads $THREADS,1)"
  note_load gemm
  "$BENCH_GEMM" --threads "$THREADS,1" | tee -a "$RAW" >&2 || log "bench_gemm failed"
  if [[ "${OPENBLAS_CORETYPE:-}" != "SkylakeX" ]]; then
    log "OpenBLAS sgemm peak with OPENBLAS_CORETYPE=SkylakeX (AVX-512 kernels), for reference"
    OPENBLAS_CORETYPE=SkylakeX "$BENCH_GEMM" --threads "$THREADS,1" | tee -a "$RAW" >&2 ||
      log "bench_gemm failed"
  fi
  log "arithmetic peaks and the engine's linear kernels against them (bench_peak)"
  "$BENCH_PEAK" | tee -a "$RAW" >&2 || log "bench_peak failed"
fi
# The runtimes of a round, by name; run_runtime runs one on every case of
# the model that model_files named last.
all_runtimes=()
skipped ort || all_runtimes+=(ort)
skipped ort || skipped ort-int8 || all_runtimes+=(ort-int8)
if ! skipped aiserve && ((have_engine)); then
  for m in $MODES; do
    if [[ "$m" == none ]]; then all_runtimes+=(aiserve); else all_runtimes+=("aiserve-$m"); fi
  done
fi
run_runtime() {  # name [extra args]
  case "$1" in
    ort) node "$HERE/bench_ort.js" --model "$ONNX" "${@:2}" ;;
    ort-int8) node "$HERE/bench_ort.js" --model "$ONNX_INT8" --name ort-int8 "${@:2}" ;;
    aiserve) "$BENCH_ENGINE" --model-dir "$MODEL_DIR" --quantization none "${@:2}" ;;
    aiserve-*) "$BENCH_ENGINE" --model-dir "$MODEL_DIR" --quantization "${1#aiserve-}" "${@:2}" ;;
  esac
}
# Load to first inference: warm page cache (files read once first), then
# LOAD_RUNS fresh processes per runtime; the median run is kept.
median_load() {  # reads JSON lines on stdin, prints the one with the median first_inference_ms
  "$PY" -c '
import json, sys
xs = sorted((json.loads(l) for l in sys.stdin if l.startswith("{")), key=lambda x: x["first_inference_ms"])
if xs:
    m = dict(xs[(len(xs) - 1) // 2], runs=len(xs))
    print(json.dumps(m))'
}

for model in $MODELS; do
  model_files "$model"
  tag="s/^{/{\"model\":\"$model\",/"  # every line a runtime prints names the model
  runtimes=()
  for rt in "${all_runtimes[@]}"; do
    if [[ "$rt" != ort-int8 || "$no_ort_int8" != *" $model "* ]]; then runtimes+=("$rt"); fi
  done
  n_rt=${#runtimes[@]}
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n_rt; i++)); do
      rt=${runtimes[$(((i + r) % n_rt))]}
      log "$model, round $((r + 1))/$ROUNDS: $rt"
      note_load "$model $rt"
      run_runtime "$rt" --cases "$RUN_CASES" "${timing[@]}" |
        sed "s/^{/{\"model\":\"$model\",\"round\":$((r + 1)),/" | tee -a "$RAW" >&2 || log "$rt failed"
    done
  done
  # PyTorch runs last: its allocator churns through gigabytes of fresh memory
  # on the large cases, and in one pair of runs on this VM aiserve measured
  # 0.80x ORT right after PyTorch and 1.0x right after ORT on the same build.
  # Run-to-run variance here is 10-15% either way, so this is a precaution.
  if ! skipped pytorch; then
    log "$model: PyTorch"
    note_load "$model pytorch"
    "$PY" "$HERE/bench_torch.py" --model-dir "$MODEL_DIR" --cases "$RUN_CASES" "${timing[@]}" |
      sed "$tag" | tee -a "$RAW" >&2 || log "bench_torch.py failed"
  fi

  if ! skipped load; then
    cat "$MODEL_DIR/model.safetensors" "$ONNX" >/dev/null
    if [[ -f "$ONNX_INT8" ]]; then cat "$ONNX_INT8" >/dev/null; fi
    log "$model: load to first inference ($LOAD_RUNS runs each)"
    note_load "$model load"
    for rt in "${runtimes[@]}"; do
      for _ in $(seq "$LOAD_RUNS"); do
        run_runtime "$rt" --load --threads "$THREADS" --t0-ns "$(date +%s%N)"
      done | median_load | sed "$tag" | tee -a "$RAW" >&2 || log "load run failed ($rt)"
    done
    if ! skipped pytorch; then
      for _ in $(seq "$LOAD_RUNS"); do
        "$PY" "$HERE/bench_torch.py" --model-dir "$MODEL_DIR" --load --threads "$THREADS" \
          --t0-ns "$(date +%s%N)"
      done | median_load | sed "$tag" | tee -a "$RAW" >&2 || log "load run failed"
    fi
  fi
done

if ! skipped tokenizer && [[ -n "$BENCH_TOKENIZER" ]]; then
  log "tokenizer ($BENCH_TOKENIZER)"
  note_load tokenizer
  tok_out=$("$BENCH_TOKENIZER" 2>&1 || true)
  echo "$tok_out" >&2
  "$PY" - "$META" "$tok_out" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["tokenizer_lines"] = [l for l in sys.argv[2].splitlines() if l.strip()]
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
fi

note_load end
"$PY" "$HERE/report.py" "$RAW" "$META" "$OUT"
rm -f "$META" "$RAW" "$WORK/run-$STAMP-cases-"*.json
