#!/usr/bin/env bash
# run.sh [BUILD_DIR] - the HTTP benchmark: `aiserve serve` (fp32, bf16 and
# int8) against the FastAPI + uvicorn + PyTorch service it replaces
# (seed_service.py), POST /predict with ~12-word sentences under wrk, on the
# same model and the same machine, on a quiet machine and under a fixed
# competing CPU load.
#
#  - Models: the DistilBERT-base-shaped checkpoint of the engine benchmark
#    (bench/engine/work/distilbert-base, made by tools/make_bench_model.py
#    --skip-check when missing) and the bundled sentiment model (the newest of
#    models/sentiment/2 and models/sentiment/1 that exists).
#  - Servers, per model: the seed, and one aiserve per quantization mode in
#    BENCH_MODES (`--quantization MODE`), per value in BENCH_ENGINE_NICE
#    (`--engine-nice N`) and per value in BENCH_ENGINE_THREADS
#    (`--engine-threads N`). All are started at once, each on its own port,
#    waited for (seed: GET /health, aiserve: GET /health/ready), checked
#    (probe.py: every sentence answered with a valid label) and warmed up
#    one after another; the runs then take turns (below), so drift of the
#    machine hits every server alike. Then SIGTERM.
#  - Runs: BENCH_ROUNDS rounds; in each, for every load (BENCH_LOADS: quiet,
#    busy) and concurrency, every server in turn (each round starting one
#    server later), one wrk run each, after waiting until no server is busy.
#    "busy": BENCH_BUSY_PROCS busy loops (`nice -n 0`, one pinned to each
#    CPU in turn with taskset) started just before the run and killed just
#    after it, so every server meets the same competing load. During the
#    highest-concurrency run a second wrk measures GET /health at a low rate.
#  - What each aiserve run also records: the nice values of the server's
#    threads and the CPU time each nice value got (/proc/PID/task/*/stat),
#    and from /metrics the batcher's batches, mean batch size, mean queue
#    wait and mean inference time, and how much of the run the batcher
#    spent in the engine.
#  - aiserve serves a temporary model repository: <tmp>/repo/sentiment/<v>
#    is a symlink to the model directory.
#  - Prints the tables and writes bench/http/work/results-<UTC stamp>.json
#    (git revision, CPU, core count, versions, every wrk result, how much CPU
#    other processes took during each run).
#
# Environment: BENCH_DURATION seconds per run (10), BENCH_WARMUP seconds (3),
# BENCH_CONCURRENCY ("1 8 64"), BENCH_ROUNDS (1), BENCH_LOADS ("quiet busy"),
# BENCH_BUSY_PROCS (the CPU count), BENCH_MODES ("none bf16 int8"),
# BENCH_ENGINE_NICE ("0"; "5 0" measures the compute threads at nice +5
# beside the default), BENCH_ENGINE_THREADS ("0", one compute thread per CPU;
# "0 4" adds servers with 4, named -t4), BENCH_WRK_THREADS (1), BENCH_THREADS (torch threads
# for the seed: 1, see below), BENCH_MODELS ("distilbert-base sentiment"),
# BENCH_SKIP (any of "seed aiserve"), BENCH_AISERVE_ARGS (extra arguments to
# every `aiserve serve`).
# A benchmark, not a test: it never fails on a number. It fails loudly (exit 1)
# when a server does not start, answers wrongly, or returns any error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
HERE="$ROOT/bench/http"
WORK="$HERE/work"
PY=/usr/bin/python3
DUR=${BENCH_DURATION:-10}
DUR=${DUR%s}
WARMUP=${BENCH_WARMUP:-3}
WARMUP=${WARMUP%s}
CONCS=${BENCH_CONCURRENCY:-1 8 64}
ROUNDS=${BENCH_ROUNDS:-1}
LOADS=${BENCH_LOADS:-quiet busy}
NCPU=$(nproc)
BUSY_PROCS=${BENCH_BUSY_PROCS:-$NCPU}
MODES=${BENCH_MODES:-none bf16 int8}
NICES=${BENCH_ENGINE_NICE:-0}
ENGINE_THREADS=${BENCH_ENGINE_THREADS:-0}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
# The seed's torch threads. 1 by default: with torch's default (the core
# count) every concurrent request in FastAPI's threadpool runs its own
# OpenMP team and the seed collapses (0 requests completed in 10 s at
# concurrency 64 on this 2-core machine); with 1 it serves the ~38 req/s the
# issue measured. The stronger baseline is the fair one.
THREADS=${BENCH_THREADS:-1}
MODELS=${BENCH_MODELS:-distilbert-base sentiment}
SKIP=" ${BENCH_SKIP:-} "
AISERVE="$BUILD/aiserve"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$WORK/raw-$STAMP.jsonl"
META="$WORK/meta-$STAMP.json"
OUT="$WORK/results-$STAMP.json"
TMP=$(mktemp -d /tmp/aiserve-bench-http.XXXXXX)
declare -A PID_OF=() PORT_OF=() LOG_OF=()
SERVERS=()
BUSY_PIDS=()
HEALTH_PID=""

log() { echo "run.sh: $*" >&2; }
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
die() {
  echo "" >&2
  echo "run.sh: FAILED: $*" >&2
  if [[ -n "${SERVER_LOG:-}" && -f "${SERVER_LOG:-}" ]]; then
    echo "run.sh: last lines of the server's output ($SERVER_LOG):" >&2
    tail -n 30 "$SERVER_LOG" >&2 || true
  fi
  echo "run.sh: partial results kept in $RAW" >&2
  exit 1
}
running() {  # pid: alive and not a zombie waiting to be reaped
  [[ -e "/proc/$1/stat" && "$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}
stop_busy() {
  local p
  for p in "${BUSY_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${BUSY_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  BUSY_PIDS=()
}
cleanup() {
  local s pid
  stop_busy
  if [[ -n "$HEALTH_PID" ]]; then kill -TERM "$HEALTH_PID" 2>/dev/null || true; fi
  for s in "${SERVERS[@]}"; do
    pid=${PID_OF[$s]}
    if running "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for s in "${SERVERS[@]}"; do
    pid=${PID_OF[$s]}
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ "$DUR" =~ ^[0-9]+$ && "$DUR" -ge 1 ]] || die "BENCH_DURATION must be whole seconds, got '$DUR'"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be whole seconds, got '$WARMUP'"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || die "BENCH_ROUNDS must be a whole number >= 1"
[[ "$BUSY_PROCS" =~ ^[0-9]+$ ]] || die "BENCH_BUSY_PROCS must be a whole number"
for l in $LOADS; do [[ "$l" == quiet || "$l" == busy ]] || die "BENCH_LOADS: '$l' is not quiet or busy"; done
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
mkdir -p "$WORK"
cd "$ROOT"

# --- what the run needs ------------------------------------------------------
if ! skipped aiserve; then
  [[ -x "$AISERVE" ]] || die "$AISERVE not found: build it first (make build), or set BENCH_SKIP=aiserve"
  "$AISERVE" serve --help >/dev/null 2>&1 ||
    die "'$AISERVE serve --help' fails: this aiserve has no serve command yet (BENCH_SKIP=aiserve runs the seed alone)"
  if [[ "$NICES" != 0 ]]; then
    [[ "$("$AISERVE" serve --help 2>&1)" == *--engine-nice* ]] ||
      die "BENCH_ENGINE_NICE is set but $AISERVE has no --engine-nice"
  fi
fi
if ! skipped seed; then
  "$PY" -c 'import fastapi, uvicorn, torch' 2>/dev/null ||
    die "the seed service needs python3-fastapi, python3-uvicorn and python3-torch (Debian)"
fi

model_dir() {  # model name -> directory
  case "$1" in
    distilbert-base) echo "$ROOT/bench/engine/work/distilbert-base" ;;
    sentiment)
      if [[ -d "$ROOT/models/sentiment/2" ]]; then echo "$ROOT/models/sentiment/2"
      else echo "$ROOT/models/sentiment/1"; fi ;;
    *) die "unknown model '$1' in BENCH_MODELS (distilbert-base, sentiment)" ;;
  esac
}
for m in $MODELS; do
  d=$(model_dir "$m")
  if [[ "$m" == distilbert-base && ! -f "$d/model.safetensors" ]]; then
    log "making the DistilBERT-base-shaped checkpoint (tools/make_bench_model.py --skip-check)"
    "$PY" tools/make_bench_model.py --skip-check >&2
  fi
  for f in config.json model.safetensors vocab.txt; do
    [[ -f "$d/$f" ]] || die "$d/$f is missing"
  done
done

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The servers of a model: seed, then aiserve per mode, nice value and
# compute-thread count.
server_names() {
  local m n t name
  skipped seed || echo seed
  if ! skipped aiserve; then
    for t in $ENGINE_THREADS; do
      for n in $NICES; do
        for m in $MODES; do
          name=aiserve
          [[ "$m" == none ]] || name="$name-$m"
          [[ "$n" == 0 ]] || name="$name-nice$n"
          [[ "$t" == 0 ]] || name="$name-t$t"
          echo "$name"
        done
      done
    done
  fi
}

# --- metadata ----------------------------------------------------------------
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cpu_family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
cpu_modelno=$(lscpu | sed -n 's/^Model: *//p' | head -1)
BENCH_META_DATE=$STAMP BENCH_META_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) \
BENCH_META_DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo 1 || echo 0) \
BENCH_META_CPU="$cpu_model (family $cpu_family model $cpu_modelno)" \
BENCH_META_WRK="$(wrk --version 2>&1 | head -1 || true)" \
BENCH_META_DUR=$DUR BENCH_META_WARMUP=$WARMUP BENCH_META_CONCS="$CONCS" \
BENCH_META_WRK_THREADS=$WRK_THREADS BENCH_META_THREADS=$THREADS \
BENCH_META_ROUNDS=$ROUNDS BENCH_META_LOADS="$LOADS" BENCH_META_BUSY=$BUSY_PROCS \
BENCH_META_AISERVE_ARGS="${BENCH_AISERVE_ARGS:-}" \
BENCH_META_CMD="BENCH_DURATION=$DUR BENCH_CONCURRENCY='$CONCS' BENCH_ROUNDS=$ROUNDS BENCH_LOADS='$LOADS' BENCH_MODES='$MODES' BENCH_ENGINE_NICE='$NICES' BENCH_ENGINE_THREADS='$ENGINE_THREADS' BENCH_MODELS='$MODELS' bench/http/run.sh" \
"$PY" - "$META" <<'EOF'
import json, os, platform, sys
e = os.environ
def version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None
meta = {
    "date": e["BENCH_META_DATE"], "git_revision": e["BENCH_META_REV"],
    "git_dirty": e["BENCH_META_DIRTY"] == "1", "cpu_model": e["BENCH_META_CPU"],
    "n_cpus": os.cpu_count(), "kernel": platform.release(),
    "command": e["BENCH_META_CMD"],
    "loadavg_at_start": os.getloadavg(),
    "duration_s": int(e["BENCH_META_DUR"]), "warmup_s": int(e["BENCH_META_WARMUP"]),
    "concurrency": [int(c) for c in e["BENCH_META_CONCS"].split()],
    "rounds": int(e["BENCH_META_ROUNDS"]), "loads": e["BENCH_META_LOADS"].split(),
    "busy_procs": int(e["BENCH_META_BUSY"]),
    "wrk_threads": int(e["BENCH_META_WRK_THREADS"]),
    "seed_torch_threads": int(e["BENCH_META_THREADS"]),
    "aiserve_extra_args": e["BENCH_META_AISERVE_ARGS"],
    "versions": {"torch": version("torch"), "fastapi": version("fastapi"),
                 "uvicorn": version("uvicorn"), "pydantic": version("pydantic"),
                 "python": platform.python_version(), "wrk": e["BENCH_META_WRK"]},
    "env": {k: e.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                  "OMP_NUM_THREADS", "OPENBLAS_L2_SIZE", "LD_PRELOAD")},
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

# --- servers -----------------------------------------------------------------
: >"$RAW"
emit() { echo "$1" >>"$RAW"; }
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Other work on the machine skews every number: each run is bracketed by marks
# of the machine's busy CPU time (/proc/stat), the server's own CPU time
# (/proc/PID/stat), this script's reaped children's (wrk) and the busy
# loops' (read while they run), so report.py can tell how much of the CPUs
# other processes took meanwhile.
note_cpu() {  # server model phase edge
  local busy steal srv self load=0 p
  read -r busy steal < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $9}' /proc/stat)
  srv=$(ticks "${PID_OF[$1]}")
  self=$(awk '{sub(/.*\) /, ""); print $14 + $15}' /proc/$$/stat)
  for p in "${BUSY_PIDS[@]}"; do load=$((load + $(ticks "$p"))); done
  emit "{\"kind\":\"cpu\",\"server\":\"$1\",\"model\":\"$2\",\"phase\":\"$3\",\"edge\":\"$4\",\"t\":$(date +%s.%N),\"busy\":$busy,\"steal\":$steal,\"server_ticks\":$srv,\"self_ticks\":$self,\"load_ticks\":$load,\"hz\":$(getconf CLK_TCK),\"ncpu\":$NCPU}"
}
# The server's threads: {"nice": [threads, cpu ticks], ...} (/proc/PID/task/*/stat).
thread_nices() {
  local f
  for f in /proc/"$1"/task/*/stat; do
    awk '{sub(/.*\) /, ""); print $17, $12 + $13}' "$f" 2>/dev/null || true
  done | "$PY" -c '
import json, sys
out = {}
for line in sys.stdin:
    nice, t = line.split()
    n, ticks = out.get(nice, [0, 0])
    out[nice] = [n + 1, ticks + int(t)]
print(json.dumps(out))'
}
# aiserve's batcher counters from /metrics, summed over models and versions.
batcher_metrics() {
  curl -s --max-time 5 "http://127.0.0.1:${PORT_OF[$1]}/metrics" | "$PY" -c '
import json, re, sys
keys = ("aiserve_batch_size_sum", "aiserve_batch_size_count", "aiserve_queue_wait_seconds_sum",
        "aiserve_queue_wait_seconds_count", "aiserve_inference_seconds_sum", "aiserve_inference_seconds_count")
out = dict.fromkeys(keys, 0.0)
for line in sys.stdin:
    m = re.match(r"^(\w+)(?:\{[^}]*\})? (\S+)$", line.strip())
    if m and m.group(1) in out:
        out[m.group(1)] += float(m.group(2))
print(json.dumps(out))'
}
rss_mb() { awk '/^VmRSS:/{printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo null; }

port_free() {
  "$PY" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0)' "$1"
}

# Those fields of the first line of $SERVER_LOG that logs event $1, as one
# JSON object (null when there is none).
log_fields() {  # event field...
  grep -m1 "\"$1\"" "$SERVER_LOG" | "$PY" -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    print(json.dumps({k: d.get(k) for k in sys.argv[1:]}))
except ValueError:
    print("null")' "${@:2}"
}

# Starts server `name` on model `model` (directory `dir`) and waits until it
# answers correctly; records start to ready, RSS and its threads' nice values.
start_server() {  # name model_name model_dir
  local name=$1 model=$2 dir=$3 ready_path t0 port pid mode nice
  port=$(free_port)
  port_free "$port" || die "port $port is already in use before starting $name"
  SERVER_LOG="$TMP/$name-$model.log"
  t0=$(date +%s%N)
  if [[ "$name" == seed ]]; then
    ready_path=/health
    MODEL_PATH="$dir" TORCH_NUM_THREADS=$THREADS PYTHONPATH="$HERE" \
      "$PY" -m uvicorn seed_service:app --host 127.0.0.1 --port "$port" --workers 1 \
      >"$SERVER_LOG" 2>&1 &
  else
    ready_path=/health/ready
    mode=none
    [[ "$name" =~ ^aiserve-(bf16|int8) ]] && mode=${BASH_REMATCH[1]}
    nice=0
    [[ "$name" =~ -nice([0-9]+) ]] && nice=${BASH_REMATCH[1]}
    local engine_threads=0
    [[ "$name" =~ -t([0-9]+)$ ]] && engine_threads=${BASH_REMATCH[1]}
    local mversion=1
    [[ "$model" == sentiment ]] && mversion=$(basename "$dir")
    mkdir -p "$TMP/repo-$name/sentiment"
    ln -sfn "$dir" "$TMP/repo-$name/sentiment/$mversion"
    # Only what differs from the defaults, so that older binaries without
    # these flags still run (compare.sh).
    local mode_args=()
    [[ "$mode" == none ]] || mode_args+=(--quantization "$mode")
    [[ "$nice" == 0 ]] || mode_args+=(--engine-nice "$nice")
    [[ "$engine_threads" == 0 ]] || mode_args+=(--engine-threads "$engine_threads")
    # Cache and rate limit off: this benchmark measures inference and
    # batching (the seed had neither on /predict); bench/cache measures hits.
    # Batch jobs off: several servers run at once, and each would want the
    # job database in ./data to itself.
    # shellcheck disable=SC2086
    "$AISERVE" serve --model-repository "$TMP/repo-$name" --host 127.0.0.1 --port "$port" \
      --no-cache --no-rate-limit --no-batch "${mode_args[@]}" ${BENCH_AISERVE_ARGS:-} \
      >"$SERVER_LOG" 2>&1 &
  fi
  pid=$!
  PID_OF[$name]=$pid PORT_OF[$name]=$port LOG_OF[$name]=$SERVER_LOG
  SERVERS+=("$name")
  log "$name on $model: pid $pid, port $port, waiting for GET $ready_path"
  local ready check
  ready=$("$PY" "$HERE/probe.py" wait --url "http://127.0.0.1:$port" --path "$ready_path" --pid "$pid" \
    --t0-ns "$t0") || die "$name did not start on $model ($dir)"
  check=$("$PY" "$HERE/probe.py" check --url "http://127.0.0.1:$port" --model-dir "$dir" \
    --kind "${name%%-*}") || die "$name answers POST /predict wrongly on $model"
  local blas=null version=null
  if [[ "$name" != seed ]]; then
    version=$(log_fields starting version revision cpus)
    # What runs (after any fallback), from the model_loaded log line.
    local loaded
    loaded=$(log_fields model_loaded quantization kernels weight_memory_bytes)
    version=$("$PY" -c 'import json, sys; v = json.loads(sys.argv[1]) or {}; v["model_loaded"] = json.loads(sys.argv[2]); print(json.dumps(v))' "$version" "$loaded")
    grep -q '"quantization_fallback"' "$SERVER_LOG" &&
      log "WARNING: $name: $(grep -m1 '"quantization_fallback"' "$SERVER_LOG")"
  else
    blas=$(sed -n 's/.*BLAS in use: //p' "$SERVER_LOG" | head -1 | "$PY" -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')
  fi
  emit "{\"kind\":\"server\",\"server\":\"$name\",\"model\":\"$model\",\"model_dir\":\"$dir\",\"ready\":$ready,\"rss_ready_mb\":$(rss_mb "$pid"),\"blas\":$blas,\"version\":$version,\"thread_nices\":$(thread_nices "$pid"),\"check\":$check}"
}

stop_server() {  # name model
  local rc=0 pid=${PID_OF[$1]}
  SERVER_LOG=${LOG_OF[$1]}
  running "$pid" || die "$1 exited during the benchmark"
  emit "{\"kind\":\"rss\",\"server\":\"$1\",\"model\":\"$2\",\"rss_end_mb\":$(rss_mb "$pid")}"
  kill -TERM "$pid"
  for _ in $(seq 300); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then
    log "WARNING: $1 did not exit within 30 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  ((rc == 0)) || log "WARNING: $1 exited with status $rc after SIGTERM"
  emit "{\"kind\":\"exit\",\"server\":\"$1\",\"model\":\"$2\",\"status_after_sigterm\":$rc}"
  for _ in $(seq 50); do port_free "${PORT_OF[$1]}" && break; sleep 0.1; done
  port_free "${PORT_OF[$1]}" || die "port ${PORT_OF[$1]} still in use after $1 stopped"
}

# Runs wrk, fails on any error it saw, and appends its JSON line to $RAW.
wrk_json() {  # server model phase conc wrk_threads duration script [extra JSON fields]
  local out line url="http://127.0.0.1:${PORT_OF[$1]}"
  SERVER_LOG=${LOG_OF[$1]}
  out=$(WRK_DELAY_MS=20 wrk -t"$5" -c"$4" -d"$6s" --latency --timeout 30s -s "$HERE/$7" "$url" 2>&1) ||
    { echo "$out" >&2; die "wrk failed ($1 $2 $3 c=$4)"; }
  line=$(grep '^{' <<<"$out" | tail -1)
  [[ -n "$line" ]] || { echo "$out" >&2; die "wrk printed no result ($1 $2 $3 c=$4)"; }
  "$PY" -c '
import json, sys
r = json.loads(sys.argv[1])
e = r["socket_errors"]
bad = {k: v for k, v in (("non-2xx responses", r["non_2xx"]), ("2xx without a label", r["bad_body"]),
       ("connect errors", e["connect"]), ("read errors", e["read"]), ("write errors", e["write"]))
       if v}
if bad:
    sys.exit(", ".join(f"{k}: {v}" for k, v in bad.items()))
# Too slow is a result, not an error: say so loudly and go on.
if e["timeout"] or r["requests"] == 0:
    print("run.sh: WARNING: %d requests completed, %d took over 30 s and are not in the "
          "latencies" % (r["requests"], e["timeout"]), file=sys.stderr)' "$line" ||
    die "$1 returned errors on $2 ($3, concurrency $4); see above"
  emit "{\"kind\":\"wrk\",\"server\":\"$1\",\"model\":\"$2\",\"phase\":\"$3\",\"concurrency\":$4,\"wrk_threads\":$5,\"duration_s\":$6${8:-},\"result\":$line}"
  log "  $1 $3 c=$4: $line"
}

# wrk stops at the end of its run, but a server may still be working through
# requests it had accepted (the seed finishes every forward pass it started).
# Wait until every server uses under 10% of a core over half a second (60 s
# at most), so that no run starts while one is still busy with the last.
quiesce() {
  local a b hz i s
  hz=$(getconf CLK_TCK)
  for i in $(seq 120); do
    a=0 b=0
    for s in "${SERVERS[@]}"; do
      running "${PID_OF[$s]}" || die "$s exited after a run"
      a=$((a + $(ticks "${PID_OF[$s]}")))
    done
    sleep 0.5
    for s in "${SERVERS[@]}"; do b=$((b + $(ticks "${PID_OF[$s]}"))); done
    if (((b - a) * 20 <= hz)); then
      ((i == 1)) || log "  the servers were busy for $((i / 2)) s after the run"
      return 0
    fi
  done
  log "WARNING: a server is still busy 60 s after the run"
}

# The competing load: BUSY_PROCS shell busy loops at nice 0, loop i pinned
# to CPU i mod NCPU.
start_busy() {
  local i
  for ((i = 0; i < BUSY_PROCS; i++)); do
    nice -n 0 taskset -c $((i % NCPU)) bash -c 'while :; do :; done' &
    BUSY_PIDS+=($!)
  done
}

max_conc=0
for c in $CONCS; do ((c > max_conc)) && max_conc=$c; done

# One measured run of server `s` at concurrency `c` under `load`.
measure() {  # server model load conc
  local s=$1 model=$2 load=$3 c=$4 t hdur phase m0 m1 n0 n1 extra=""
  t=$((c < WRK_THREADS ? c : WRK_THREADS))
  phase="predict-$load-c$c"
  if [[ "$s" != seed ]]; then m0=$(batcher_metrics "$s"); fi
  [[ "$load" == busy ]] && start_busy
  n0=$(thread_nices "${PID_OF[$s]}")
  note_cpu "$s" "$model" "$phase-r$ROUND" start
  if ((c == max_conc && DUR >= 3)); then
    # GET /health at a low rate (2 connections, one request per 20 ms each)
    # while this run saturates /predict; starts 1 s in, ends 1 s before.
    hdur=$((DUR - 2))
    (sleep 1; wrk_json "$s" "$model" "health-during-$load-c$c" 2 1 "$hdur" health.lua) &
    HEALTH_PID=$!
    wrk_json "$s" "$model" predict "$c" "$t" "$DUR" predict.lua ",\"load\":\"$load\",\"round\":$ROUND"
    wait "$HEALTH_PID" || die "the /health probe failed ($s $model)"
    HEALTH_PID=""
  else
    wrk_json "$s" "$model" predict "$c" "$t" "$DUR" predict.lua ",\"load\":\"$load\",\"round\":$ROUND"
  fi
  note_cpu "$s" "$model" "$phase-r$ROUND" end
  n1=$(thread_nices "${PID_OF[$s]}")
  stop_busy
  if [[ "$s" != seed ]]; then
    m1=$(batcher_metrics "$s")
    extra=",\"batcher_before\":$m0,\"batcher_after\":$m1"
  fi
  emit "{\"kind\":\"threads\",\"server\":\"$s\",\"model\":\"$model\",\"phase\":\"$phase\",\"round\":$ROUND,\"before\":$n0,\"after\":$n1$extra}"
  running "${PID_OF[$s]}" || die "$s exited during the run ($load, concurrency $c)"
  quiesce
}

for m in $MODELS; do
  d=$(model_dir "$m")
  log "model $m: $d"
  mapfile -t names < <(server_names)
  for s in "${names[@]}"; do start_server "$s" "$m" "$d"; done
  if ((WARMUP > 0)); then
    for s in "${names[@]}"; do
      log "  warm-up of $s: ${WARMUP}s at concurrency 8"
      wrk_json "$s" "$m" warmup 8 "$((8 < WRK_THREADS ? 8 : WRK_THREADS))" "$WARMUP" predict.lua
      quiesce
    done
  fi
  n=${#names[@]}
  for ((r = 0; r < ROUNDS; r++)); do
    ROUND=$((r + 1))
    for load in $LOADS; do
      for c in $CONCS; do
        for ((i = 0; i < n; i++)); do
          s=${names[$(((i + r) % n))]}
          log "round $((r + 1))/$ROUNDS, $load, concurrency $c: $s"
          measure "$s" "$m" "$load" "$c"
        done
      done
    done
  done
  for s in "${names[@]}"; do stop_server "$s" "$m"; done
  SERVERS=()
done

"$PY" "$HERE/report.py" "$RAW" "$META" "$OUT"
rm -f "$META" "$RAW"
