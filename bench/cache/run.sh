#!/usr/bin/env bash
# run.sh [BUILD_DIR] - the cache benchmark: cache hits (the same request
# repeated, hit.lua, already cached) through aiserve's memory cache and its
# Redis cache, side by side with the seed's FastAPI service and its Redis
# cache decorator (seed_cached_service.py), on the bundled sentiment model
# and one real redis-server on a free loopback port; and the cost of the API
# key check plus rate limiting on that path (on and off, both backends).
#
# Configurations, one server at a time, each warmed up (which fills its
# cache), then wrk at each concurrency:
#   seed-redis            the seed + its Redis cache decorator
#   aiserve-memory        cache in memory, no keys, no rate limit
#   aiserve-memory-guard  the same + an API key on every request + rate limit
#   aiserve-redis         cache in Redis, no keys, no rate limit
#   aiserve-redis-guard   the same + API key + rate limit (one Lua script per request)
# The guarded runs use a key of a tier whose limit is never reached
# (10 million a minute), so every request does the full check and is admitted.
#
# Besides throughput (which other work on a 2-core machine skews), each run
# records the server's own CPU time, so the table also gives CPU microseconds
# per request: the steadier measure of what the key check and the limiter
# cost. Prints a table with ratios and writes bench/cache/work/results-<UTC>.json.
# Each configuration runs BENCH_ROUNDS times (3) at each concurrency, the
# aiserve configurations interleaved round by round (all four servers up at
# once, idle but for the one being measured), and the report takes medians.
# Environment: BENCH_DURATION (5 s per run), BENCH_ROUNDS (3), BENCH_WARMUP
# (3 s), BENCH_CONCURRENCY ("8 64"), BENCH_WRK_THREADS (1), BENCH_SKIP (names from the list above),
# BENCH_HTTP_THREADS (aiserve's event loops; default one per CPU).
# A benchmark, not a test: it never fails on a number, only when a server does
# not start or answers with an error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
HERE="$ROOT/bench/cache"
WORK="$HERE/work"
PY=/usr/bin/python3
DUR=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-3}
CONCS=${BENCH_CONCURRENCY:-8 64}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
SKIP=" ${BENCH_SKIP:-} "
AISERVE="$BUILD/aiserve"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$WORK/raw-$STAMP.jsonl"
OUT="$WORK/results-$STAMP.json"
TMP=$(mktemp -d /tmp/aiserve-bench-cache.XXXXXX)
declare -A PIDS=() PORTS=()
REDIS_PID=""

log() { echo "run.sh: $*" >&2; }
die() {
  echo "run.sh: FAILED: $*" >&2
  [[ -n "${SERVER_LOG:-}" && -f "${SERVER_LOG:-}" ]] && tail -n 20 "$SERVER_LOG" >&2
  exit 1
}
stop_pid() {
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() { for p in "${PIDS[@]}"; do stop_pid "$p"; done; stop_pid "$REDIS_PID"; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v wrk >/dev/null || die "wrk is not installed (scripts/install-deps.sh --bench)"
command -v redis-server >/dev/null || die "redis-server is not installed (scripts/install-deps.sh)"
[[ -x "$AISERVE" ]] || die "$AISERVE not found: make build first"
"$PY" -c 'import fastapi, uvicorn, torch, redis' 2>/dev/null ||
  die "the seed needs python3-fastapi, python3-uvicorn, python3-torch and python3-redis"
mkdir -p "$WORK"
: >"$RAW"

MODEL="$ROOT/models/sentiment/2"
[[ -d "$MODEL" ]] || MODEL="$ROOT/models/sentiment/1"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
  >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$RPORT" ping >/dev/null || die "redis-server did not start"

# One key of a tier that is never limited.
KEYS="$TMP/keys.json"
KEY=$(env -u AISERVE_KEYS_FILE "$AISERVE" keys create --keys-file "$KEYS" --name bench --scopes predict \
  --tier unlimited)
mkdir -p "$TMP/repo/sentiment"
ln -s "$MODEL" "$TMP/repo/sentiment/$(basename "$MODEL")"

start() {  # name: starts it on a port of its own
  local name=$1 port
  port=$(free_port)
  PORTS[$name]=$port
  SERVER_LOG="$TMP/$name.log"
  local common=(serve --model-repository "$TMP/repo" --host 127.0.0.1 --port "$port"
                --no-access-log --batch-data-dir "$TMP/jobs-$name"
                ${BENCH_HTTP_THREADS:+--http-threads "$BENCH_HTTP_THREADS"})
  local guard=(--keys-file "$KEYS" --rate-limit --rate-limit-tiers "unlimited=10000000/10000000")
  local open=(--keys-file "$TMP/none.json" --no-rate-limit)
  case "$name" in
    seed-redis)
      REDIS_URL="redis://127.0.0.1:$RPORT/0" MODEL_PATH="$MODEL" TORCH_NUM_THREADS=1 \
        PYTHONPATH="$HERE" "$PY" -m uvicorn seed_cached_service:app --host 127.0.0.1 --port "$port" \
        --workers 1 --log-level warning >"$SERVER_LOG" 2>&1 & ;;
    aiserve-memory) "$AISERVE" "${common[@]}" "${open[@]}" >"$SERVER_LOG" 2>&1 & ;;
    aiserve-memory-guard) "$AISERVE" "${common[@]}" "${guard[@]}" >"$SERVER_LOG" 2>&1 & ;;
    aiserve-redis) "$AISERVE" "${common[@]}" "${open[@]}" --redis-url "redis://127.0.0.1:$RPORT/0" \
                     --redis-key-prefix "open:" >"$SERVER_LOG" 2>&1 & ;;
    aiserve-redis-guard) "$AISERVE" "${common[@]}" "${guard[@]}" --redis-url "redis://127.0.0.1:$RPORT/0" \
                           --redis-key-prefix "guard:" >"$SERVER_LOG" 2>&1 & ;;
  esac
  PIDS[$name]=$!
  for _ in $(seq 600); do
    curl -s "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"status":"healthy"' && return 0
    kill -0 "${PIDS[$name]}" 2>/dev/null || die "$name exited at start"
    sleep 0.1
  done
  die "$name did not become healthy"
}

cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

run_wrk() {  # name phase conc dur
  local out line key_env=() t0 t1 pid=${PIDS[$1]}
  [[ "$1" == *guard ]] && key_env=(WRK_API_KEY="$KEY")
  t0=$(cpu_ticks "$pid")
  out=$(env "${key_env[@]}" wrk -t"$WRK_THREADS" -c"$3" -d"$4s" --latency --timeout 30s \
        -s "$HERE/hit.lua" "http://127.0.0.1:${PORTS[$1]}" 2>&1) || { echo "$out" >&2; die "wrk failed ($1)"; }
  t1=$(cpu_ticks "$pid")
  line=$(grep '^{' <<<"$out" | tail -1)
  "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); e = r["socket_errors"]
sys.exit("errors: %r" % r if r["non_2xx"] or r["bad_body"] or e["connect"] or e["read"] or e["write"] else 0)' \
    "$line" || die "$1 answered with errors ($2, c=$3)"
  echo "{\"config\":\"$1\",\"phase\":\"$2\",\"concurrency\":$3,\"server_cpu_s\":$(( (t1 - t0) * 1000 / $(getconf CLK_TCK) ))e-3,\"result\":$line}" >>"$RAW"
  log "  $1 $2 c=$3: $(sed 's/"latency_ms".*//' <<<"$line")"
}

warm() {  # name: fill the cache, and check that the answer is real and cached
  local name=$1
  run_wrk "$name" warmup 8 "$WARMUP"
  body=$(curl -s -D "$TMP/headers" -H 'Content-Type: application/json' ${KEY:+-H "X-API-Key: $KEY"} \
        -d "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$HERE/hit.lua")" "http://127.0.0.1:${PORTS[$name]}/predict")
  grep -q '"label"' <<<"$body" || die "$name: no label in the answer: $body"
  hit=$(tr -d '\r' <"$TMP/headers" | sed -n 's/^X-Cache: //Ip')
  [[ "$name" == seed-redis || "$hit" == HIT ]] || die "$name: a warm request was not a cache hit ($hit)"
}

skipped() { [[ "$SKIP" == *" $1 "* ]]; }

# The seed first, alone (its rounds back to back), then stopped.
if ! skipped seed-redis; then
  log "seed-redis"
  start seed-redis
  warm seed-redis
  for c in $CONCS; do
    for r in $(seq "$ROUNDS"); do run_wrk seed-redis hit "$c" "$DUR"; done
  done
  stop_pid "${PIDS[seed-redis]}"
fi

# The aiserve configurations all run at once (an idle server takes no CPU),
# and their runs are interleaved, round after round, so that a change in
# what else the machine does touches every configuration alike.
configs=()
for name in aiserve-memory aiserve-memory-guard aiserve-redis aiserve-redis-guard; do
  skipped "$name" || configs+=("$name")
done
for name in "${configs[@]}"; do log "$name"; start "$name"; warm "$name"; done
for c in $CONCS; do
  for r in $(seq "$ROUNDS"); do
    for name in "${configs[@]}"; do run_wrk "$name" hit "$c" "$DUR"; done
  done
done
for name in "${configs[@]}"; do stop_pid "${PIDS[$name]}"; done

"$PY" "$HERE/report.py" "$RAW" "$OUT" "$(git -C "$ROOT" rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
