#!/usr/bin/env bash
# run.sh [BUILD_DIR] - the LLM gateway benchmark: what aiserve's gateway
# (POST /v1/chat/completions) adds to a call, measured as the latency through
# aiserve minus the latency of the same call made directly to the upstream,
# against a fake upstream (fake_upstream.js) that answers after a fixed delay.
#
#  1. Starts the fake (node fake_upstream.js: delay, chunks and chunk interval
#     from the knobs below; an API key it checks) and aiserve (BUILD_DIR/aiserve
#     serve, a gateway with one model "bench" on the fake, the gateway's cache
#     off, --no-cache --no-rate-limit --no-batch --max-connections 10000, no
#     local models). Checks one answer and one stream each way.
#  2. Overhead: wrk (chat.lua) against the fake directly and through aiserve,
#     the two interleaved (their order alternating from round to round),
#     at each concurrency, non-streamed and streamed, for BENCH_ROUNDS rounds;
#     then the same at a fixed rate (BENCH_RATE requests/s, paced by
#     chat.lua's delay(); wrk2 is not in Debian). Every run records the CPU
#     time the fake, aiserve and wrk took, the machine's busy time, and how
#     many new connections the fake accepted (is aiserve reusing its upstream
#     connections?).
#  3. Stream timing: stream_timing.js, 30 streams one after another, direct
#     and through aiserve: time to the first content event and the longest
#     wait between two of them (what wrk's whole-stream latency hides).
#  4. Open streams: a fresh aiserve on a fresh fake whose streams are slow
#     (BENCH_STREAM_CHUNKS chunks 1 s apart); streams.js opens up to
#     BENCH_STREAMS streams through it at once and reads aiserve's VmRSS
#     before and with all of them open.
#  5. report.py prints the tables; everything goes to
#     bench/gateway/work/results-<UTC stamp>.json (with the git revision, the
#     CPU, the versions and this command).
#
# Environment (defaults): BENCH_ROUNDS (3), BENCH_DURATION seconds per run
# (5), BENCH_DURATION_C1 seconds per run at concurrency 1 (10: at 50 ms a
# call, 5 s is only 100 calls), BENCH_CONCURRENCY ("1 64 512"), BENCH_RATE
# (1000; 0 skips the fixed-rate runs), BENCH_RATE_CONNECTIONS (256),
# BENCH_DELAY_MS (50), BENCH_CHUNKS (8) and BENCH_INTERVAL_MS (5) for the
# streamed runs, BENCH_STREAMS (5000; 0 skips the open-streams part),
# BENCH_STREAM_CHUNKS (20), BENCH_AISERVE_ARGS (extra flags for aiserve
# serve), BENCH_SKIP (any of "overhead rate timing streams").
# A benchmark, not a test: it never fails on a number. It fails loudly (exit
# 1) when a server does not start or answers wrongly; errors under load are
# counted and reported.
# Every part is bounded: with the defaults the whole run takes about 6 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-build}
[[ "$BUILD" = /* ]] || BUILD="$PWD/$BUILD"
HERE="$ROOT/bench/gateway"
WORK="$HERE/work"
AISERVE="$BUILD/aiserve"
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-5}
DUR_C1=${BENCH_DURATION_C1:-10}
CONCS=${BENCH_CONCURRENCY:-1 64 512}
RATE=${BENCH_RATE:-1000}
RATE_CONNS=${BENCH_RATE_CONNECTIONS:-256}
DELAY_MS=${BENCH_DELAY_MS:-50}
CHUNKS=${BENCH_CHUNKS:-8}
INTERVAL_MS=${BENCH_INTERVAL_MS:-5}
STREAMS=${BENCH_STREAMS:-5000}
STREAM_CHUNKS=${BENCH_STREAM_CHUNKS:-20}
SKIP=" ${BENCH_SKIP:-} "
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$WORK/raw-$STAMP.jsonl"
OUT="$WORK/results-$STAMP.json"
TMP=$(mktemp -d /tmp/aiserve-bench-gateway.XXXXXX)
HZ=$(getconf CLK_TCK)
# The fake's API key: the gateway reads it from GWBENCH_FAKE_KEY (api_key_env)
# and sends it; the direct calls send it themselves.
KEY="gwbench-$RANDOM$RANDOM"
FAKE_PID="" SERVER_PID="" SERVER_LOG=""

COMMAND="bench/gateway/run.sh $*"
for v in BENCH_ROUNDS BENCH_DURATION BENCH_DURATION_C1 BENCH_CONCURRENCY BENCH_RATE BENCH_RATE_CONNECTIONS \
         BENCH_DELAY_MS BENCH_CHUNKS BENCH_INTERVAL_MS BENCH_STREAMS BENCH_STREAM_CHUNKS BENCH_AISERVE_ARGS BENCH_SKIP \
         LD_PRELOAD; do
  [[ -n "${!v:-}" ]] && COMMAND="$v='${!v}' $COMMAND"
done

log() { echo "run.sh: $*" >&2; }
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
die() {
  echo "run.sh: FAILED: $*" >&2
  if [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]]; then
    echo "run.sh: last lines of aiserve's output ($SERVER_LOG):" >&2
    tail -n 20 "$SERVER_LOG" >&2 || true
  fi
  exit 1
}
stop() {  # pid: SIGTERM, then KILL after 10 s
  local pid=$1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "warning: $pid did not stop in 10 s; KILL"
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$SERVER_PID"
  stop "$FAKE_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for n in ROUNDS DUR DUR_C1 RATE RATE_CONNS DELAY_MS CHUNKS INTERVAL_MS STREAMS STREAM_CHUNKS; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
command -v wrk >/dev/null || die "wrk is not installed: scripts/install-deps.sh --bench"
command -v node >/dev/null || die "node is not installed"
command -v curl >/dev/null || die "curl is not installed"
[[ -x "$AISERVE" ]] || die "$AISERVE not found: build it first (cmake --build $BUILD)"
mkdir -p "$WORK"

# Each open stream holds a client socket, an aiserve socket each way and a
# fake socket: raise the descriptor limit as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ "$NOFILE" != unlimited ]] && (( STREAMS > 0 && 2 * STREAMS + 200 > NOFILE )); then
  log "warning: the descriptor limit is $NOFILE; BENCH_STREAMS lowered from $STREAMS to $(( (NOFILE - 200) / 2 ))"
  STREAMS=$(( (NOFILE - 200) / 2 ))
fi

# --- metadata ------------------------------------------------------------------
: >"$RAW"
emit() { echo "$1" >>"$RAW"; }
emit "$(COMMAND="$COMMAND" STAMP="$STAMP" NOFILE="$NOFILE" REV="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
  DIRTY="$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo true || echo false)" \
  CPU="$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
  FAMILY="$(lscpu | sed -n 's/^CPU family: *//p' | head -1)" MODEL="$(lscpu | sed -n 's/^Model: *//p' | head -1)" \
  WRKV="$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)" NODEV="$(node --version)" \
  AISERVE_PATH="$AISERVE" \
  /usr/bin/python3 -c '
import json, os
e = os.environ
print(json.dumps({"kind": "meta", "date": e["STAMP"], "command": e["COMMAND"], "git_revision": e["REV"],
                  "git_dirty": e["DIRTY"] == "true", "cpu_model": e["CPU"], "cpu_family": e["FAMILY"],
                  "cpu_model_number": e["MODEL"], "n_cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                  "nofile": e["NOFILE"], "wrk": e["WRKV"], "node": e["NODEV"], "aiserve": e["AISERVE_PATH"]}))')"

# --- processes -----------------------------------------------------------------
# CPU time of a process in microseconds, all its threads (on-CPU time from
# schedstat: nanoseconds, user and kernel), and of this script's reaped
# children (wrk) in clock ticks.
cpu_us() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ns += $1} END {printf "%.0f", ns / 1000}'; }
child_ticks() { awk '{sub(/.*\) /, ""); print $14 + $15}' "/proc/$$/stat"; }
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
now() { date +%s.%N; }

FAKE_URL=""
start_fake() {  # delay_ms chunks interval_ms
  local out="$TMP/fake.out"
  : >"$out"
  FAKE_API_KEY=$KEY node "$HERE/fake_upstream.js" --port 0 --delay-ms "$1" --chunks "$2" --interval-ms "$3" \
    >"$out" 2>"$TMP/fake.err" &
  FAKE_PID=$!
  local port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/^{"port":\([0-9]*\).*/\1/p' "$out")
    [[ -n "$port" ]] && break
    kill -0 "$FAKE_PID" 2>/dev/null || die "the fake upstream exited: $(cat "$TMP/fake.err")"
    sleep 0.1
  done
  [[ -n "$port" ]] || die "the fake upstream did not start in 10 s"
  FAKE_URL="http://127.0.0.1:$port"
}
fake_stat() { curl -s "$FAKE_URL/stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

URL=""
start_aiserve() {  # name
  cat >"$TMP/gateway.yaml" <<EOF
# the gateway benchmark's configuration (bench/gateway/run.sh)
providers:
  - name: fake
    base_url: $FAKE_URL/v1
    api_key_env: GWBENCH_FAKE_KEY
models:
  - {name: bench, provider: fake}
cache: {enabled: false}
EOF
  mkdir -p "$TMP/repo" "$TMP/cwd"
  SERVER_LOG="$TMP/aiserve-$1.log"
  # Run from an empty folder: the server's relative defaults (./data for
  # keys and batch jobs) must not find or create anything in the tree.
  # shellcheck disable=SC2086
  (cd "$TMP/cwd" && GWBENCH_FAKE_KEY=$KEY exec "$AISERVE" serve --host 127.0.0.1 --port 0 \
     --model-repository "$TMP/repo" --gateway-config "$TMP/gateway.yaml" \
     --no-cache --no-rate-limit --no-batch --max-connections 10000 --drain-timeout 1s \
     ${BENCH_AISERVE_ARGS:-} >"$SERVER_LOG" 2>&1) &
  SERVER_PID=$!
  local port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.*"msg":"listening".*"port":\([0-9]*\).*/\1/p' "$SERVER_LOG" | head -1)
    [[ -n "$port" ]] && curl -sf "http://127.0.0.1:$port/v1/models" | grep -q '"id":"bench"' && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "aiserve exited at start"
    sleep 0.1
  done
  [[ -n "$port" ]] || die "aiserve did not start in 10 s"
  URL="http://127.0.0.1:$port"
}

# One answer and one stream each way, checked as a client would.
check_answers() {
  local target url auth body
  for target in direct aiserve; do
    url=$FAKE_URL auth=(-H "Authorization: Bearer $KEY")
    [[ $target == aiserve ]] && url=$URL auth=()
    body=$(curl -s "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/chat/completions" \
      -d '{"model": "bench", "messages": [{"role": "user", "content": "Say hello."}]}')
    /usr/bin/python3 -c '
import json, sys
a = json.loads(sys.argv[1])
assert a["object"] == "chat.completion" and a["model"] == "bench", a
assert a["choices"][0]["message"]["content"] and a["usage"]["total_tokens"] > 0, a' "$body" ||
      die "$target: a wrong answer: $body"
    body=$(curl -sN "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/chat/completions" \
      -d '{"model": "bench", "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "Say hello."}]}')
    CHUNKS=$CHUNKS /usr/bin/python3 -c '
import json, os, sys
ev = [l[6:] for l in sys.argv[1].split("\n") if l.startswith("data: ")]
assert ev[-1] == "[DONE]", ev
chunks = [json.loads(e) for e in ev[:-1]]
content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
assert len(content) == int(os.environ["CHUNKS"]), len(content)
assert chunks[-1]["usage"]["total_tokens"] > 0 and all(c["model"] == "bench" for c in chunks)' "$body" ||
      die "$target: a wrong stream: $body"
  done
}

# Waits (10 s at most) until the fake has no call in flight: a run's calls
# that wrk abandoned at its end must not land in the next run.
wait_idle() {
  for _ in $(seq 200); do
    [[ "$(fake_stat in_flight)" == 0 ]] && return 0
    sleep 0.05
  done
  log "warning: the fake still had calls in flight 10 s after a run"
}

# One wrk run; appends a JSON line to RAW.
# run_one round target(direct|aiserve) mode(json|stream) connections rate(0: as fast as answered) seconds
run_one() {
  local round=$1 target=$2 mode=$3 conns=$4 rate=$5 secs=$6 url bearer="" line
  url=$FAKE_URL
  [[ $target == direct ]] && bearer=$KEY
  [[ $target == aiserve ]] && url=$URL
  local c0 f0 s0 w0 b0 t0 c1 f1 s1 w1 b1 t1
  c0=$(fake_stat connections); f0=$(cpu_us "$FAKE_PID"); s0=$(cpu_us "$SERVER_PID"); w0=$(child_ticks)
  b0=$(busy_ticks); t0=$(now)
  line=$(WRK_STREAM=$([[ $mode == stream ]] && echo 1 || echo 0) WRK_RATE=$rate WRK_BEARER=$bearer \
         wrk -t1 -c"$conns" -d"${secs}s" --timeout 10s -s "$HERE/chat.lua" "$url" | tail -n 1)
  t1=$(now); b1=$(busy_ticks); w1=$(child_ticks); s1=$(cpu_us "$SERVER_PID"); f1=$(cpu_us "$FAKE_PID")
  c1=$(fake_stat connections)
  [[ "$line" == "{"* ]] || die "wrk printed no result for $target $mode c=$conns"
  emit "{\"kind\":\"run\",\"round\":$round,\"target\":\"$target\",\"mode\":\"$mode\",\"connections\":$conns,\"rate\":$rate,\"wall_s\":$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'),\"hz\":$HZ,\"ncpu\":$(nproc),\"fake_cpu_us\":$((f1 - f0)),\"aiserve_cpu_us\":$((s1 - s0)),\"wrk_ticks\":$((w1 - w0)),\"busy_ticks\":$((b1 - b0)),\"new_upstream_connections\":$((c1 - c0 - 1)),\"wrk\":$line}"
  log "$(printf 'round %d %-7s %-6s c=%-4d rate=%-5d %s' "$round" "$target" "$mode" "$conns" "$rate" \
        "$(echo "$line" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]; print("%.0f req/s p50 %.2f p99 %.2f ms, non-2xx %d" % (r["requests_per_s"], l["p50"], l["p99"], r["non_2xx"]))')")"
  wait_idle
}

# --- overhead --------------------------------------------------------------------
log "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; revision $(git -C "$ROOT" rev-parse --short HEAD)"
if ! skipped overhead || ! skipped timing || { ! skipped rate && (( RATE > 0 )); }; then
  start_fake "$DELAY_MS" "$CHUNKS" "$INTERVAL_MS"
  start_aiserve overhead
  log "fake upstream $FAKE_URL (delay ${DELAY_MS} ms; streams: $CHUNKS chunks ${INTERVAL_MS} ms apart), aiserve $URL (pid $SERVER_PID)"
  check_answers
  # What aiserve takes when nothing happens (its timers): it is part of the
  # CPU per request at low rates.
  i0=$(cpu_us "$SERVER_PID"); sleep 3; i1=$(cpu_us "$SERVER_PID")
  emit "{\"kind\":\"aiserve_idle\",\"cpu_us_per_s\":$(( (i1 - i0) / 3 ))}"
  log "warm-up"
  for t in direct aiserve; do
    for m in json stream; do
      WRK_STREAM=$([[ $m == stream ]] && echo 1 || echo 0) WRK_BEARER=$([[ $t == direct ]] && echo "$KEY") \
        wrk -t1 -c64 -d2s --timeout 10s -s "$HERE/chat.lua" "$([[ $t == direct ]] && echo "$FAKE_URL" || echo "$URL")" >/dev/null
      wait_idle
    done
  done
  for round in $(seq "$ROUNDS"); do
    # direct first in odd rounds, aiserve first in even ones
    order="direct aiserve"
    (( round % 2 == 0 )) && order="aiserve direct"
    if ! skipped overhead; then
      for mode in json stream; do
        for c in $CONCS; do
          secs=$DUR
          (( c == 1 )) && secs=$DUR_C1
          for t in $order; do run_one "$round" "$t" "$mode" "$c" 0 "$secs"; done
        done
      done
    fi
    if ! skipped rate && (( RATE > 0 )); then
      for mode in json stream; do
        for t in $order; do run_one "$round" "$t" "$mode" "$RATE_CONNS" "$RATE" "$DUR"; done
      done
    fi
  done
  if ! skipped timing; then
    for t in direct aiserve; do
      url=$FAKE_URL bearer=(--bearer "$KEY")
      [[ $t == aiserve ]] && url=$URL bearer=()
      line=$(node "$HERE/stream_timing.js" --url "$url" --n 30 "${bearer[@]}") || die "stream_timing.js failed ($t)"
      emit "{\"kind\":\"stream_timing\",\"target\":\"$t\",\"result\":$line}"
      log "stream timing $t: $line"
    done
  fi
  emit "{\"kind\":\"aiserve_rss_kb\",\"after_overhead\":$(awk '/^VmRSS:/{print $2}' "/proc/$SERVER_PID/status")}"
  stop "$SERVER_PID"; SERVER_PID=""
  stop "$FAKE_PID"; FAKE_PID=""
fi

# --- open streams ------------------------------------------------------------------
if ! skipped streams && (( STREAMS > 0 )); then
  start_fake 50 "$STREAM_CHUNKS" 1000
  start_aiserve streams
  log "open streams: up to $STREAMS through aiserve (pid $SERVER_PID), $STREAM_CHUNKS chunks 1 s apart each"
  # One stream first, so the "before" memory is that of a server that has
  # served (libcurl, the loops' buffers), not of one that never did.
  curl -sN -o /dev/null "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "bench", "stream": true, "messages": [{"role": "user", "content": "hi"}]}' --max-time 40 ||
    die "the warm-up stream failed"
  line=$(timeout 90 node "$HERE/streams.js" --url "$URL" --pid "$SERVER_PID" --n "$STREAMS" \
         --chunks "$STREAM_CHUNKS" --fake-url "$FAKE_URL" --deadline-s 60) || die "streams.js failed"
  emit "{\"kind\":\"streams\",\"result\":$line}"
  kill -0 "$SERVER_PID" 2>/dev/null || die "aiserve exited during the open-streams run"
  stop "$SERVER_PID"; SERVER_PID=""
  stop "$FAKE_PID"; FAKE_PID=""
fi

/usr/bin/python3 "$HERE/report.py" "$RAW" "$OUT"
log "results: $OUT (raw lines: $RAW)"
