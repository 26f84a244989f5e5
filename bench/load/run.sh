#!/usr/bin/env bash
# run.sh - the load-testing kit: drives a running aiserve deployment (one
# server, or replicas behind a load balancer) with wrk at a series of
# concurrencies, one after another, and writes a report directory:
# results.json, summary.md and SVG plots (throughput, p50/p90/p99 latency and
# errors against concurrency). docs/operations.md ("Load testing your
# deployment") is the user's guide; `run.sh --help` lists the options.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  cat <<'EOF'
usage: bench/load/run.sh URL [options]

Drives the deployment at URL (e.g. http://10.0.0.5:8000) with wrk at each
concurrency in turn, after a short warm-up, and writes a report directory
(results.json, summary.md, throughput.svg, latency.svg, errors.svg).
It stops by itself after about WARMUP + (number of concurrencies x DURATION)
seconds.

  --key API_KEY        sent as X-API-Key (never written to the report)
  --endpoint PATH      /predict (default), /v1/embeddings, /v1/chat/completions,
                       or any other path that takes a JSON POST
  --concurrency LIST   open connections, one run each (default "1 8 32 64")
  --duration SECONDS   length of each run (default 10)
  --warmup SECONDS     warm-up at the first concurrency, not reported (default 3; 0: none)
  --body FILE          send this JSON body in every request instead of the
                       default one (which varies its text between requests)
  --model NAME         "model" of the default body for /v1/embeddings (default:
                       the server's default model) and /v1/chat/completions (required)
  --cache              let response caches answer: no "Cache-Control: no-cache"
  --threads N          wrk threads (default: the smaller of the CPU count and the concurrency)
  --timeout SECONDS    a request slower than this counts as a timeout error (default 30)
  --out DIR            report directory (default bench/load/work/<UTC date and time>)
  -h, --help           this help

By default every request carries "Cache-Control: no-cache", so aiserve's
response cache (and the gateway's) never answers and every request reaches a
model: the numbers are those of the models, not of the cache.
Needs wrk (Debian: apt-get install wrk; scripts/install-deps.sh --bench) and python3.
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }
log() { echo "run.sh: $*" >&2; }

URL=""
KEY=""
ENDPOINT=/predict
CONCS="1 8 32 64"
DUR=10
WARMUP=3
BODY=""
MODEL=""
NO_CACHE=1
THREADS=""
TIMEOUT=30
OUT=""
# The command as run, for the report, with the key replaced.
SHOWN="bench/load/run.sh"
shell_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
while (($#)); do
  arg=$1
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --cache) NO_CACHE=0; SHOWN+=" --cache"; shift; continue ;;
    --key|--endpoint|--concurrency|--duration|--warmup|--body|--model|--threads|--timeout|--out)
      (($# >= 2)) || die "$arg needs a value (see --help)"
      val=$2
      if [[ "$arg" = --key ]]; then SHOWN+=" --key REDACTED"; else SHOWN+=" $arg $(shell_word "$val")"; fi
      case "$arg" in
        --key) KEY=$val ;;
        --endpoint) ENDPOINT=$val ;;
        --concurrency) CONCS=$val ;;
        --duration) DUR=${val%s} ;;
        --warmup) WARMUP=${val%s} ;;
        --body) BODY=$val ;;
        --model) MODEL=$val ;;
        --threads) THREADS=$val ;;
        --timeout) TIMEOUT=${val%s} ;;
        --out) OUT=$val ;;
      esac
      shift 2 ;;
    -*) die "unknown option $arg (see --help)" ;;
    *) [[ -z "$URL" ]] || die "one URL only (got $URL and $arg)"
       URL=$arg; SHOWN+=" $(shell_word "$arg")"; shift ;;
  esac
done

[[ -n "$URL" ]] || { usage >&2; exit 2; }
[[ "$URL" =~ ^https?://[^/]+/?$ ]] || die "URL must be scheme://host[:port] without a path (got $URL); the path is --endpoint"
URL=${URL%/}
[[ "$ENDPOINT" = /* ]] || die "--endpoint must start with / (got $ENDPOINT)"
for n in $CONCS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "--concurrency takes positive integers (got '$n')"; done
[[ -n "${CONCS// /}" ]] || die "--concurrency is empty"
[[ "$DUR" =~ ^[1-9][0-9]*$ ]] || die "--duration takes whole seconds (got $DUR)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup takes whole seconds (got $WARMUP)"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout takes whole seconds (got $TIMEOUT)"
[[ -z "$THREADS" || "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads takes a positive integer (got $THREADS)"
if [[ -n "$BODY" ]]; then
  [[ -r "$BODY" ]] || die "--body: cannot read $BODY"
  BODY=$(cd "$(dirname "$BODY")" && pwd)/$(basename "$BODY")
elif [[ "$ENDPOINT" = /v1/chat/completions && -z "$MODEL" ]]; then
  die "/v1/chat/completions needs --model (a model or route of the gateway) or --body FILE"
elif [[ "$ENDPOINT" != */predict && "$ENDPOINT" != /v1/embeddings && "$ENDPOINT" != /v1/chat/completions ]]; then
  die "no default body for $ENDPOINT: pass --body FILE"
fi
command -v wrk >/dev/null || die "wrk is not installed (Debian: apt-get install wrk, or scripts/install-deps.sh --bench)"
command -v python3 >/dev/null || die "python3 is not installed"

OUT=${OUT:-$HERE/work/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
NCPU=$(nproc)

export LOAD_PATH="$ENDPOINT" LOAD_BODY_FILE="$BODY" LOAD_MODEL="$MODEL" \
       LOAD_API_KEY="$KEY" LOAD_NO_CACHE="$NO_CACHE"

# One wrk run: concurrency, seconds, output file. wrk stops after -d; the
# outer timeout only guards against a wrk that does not.
run_wrk() {
  local c=$1 secs=$2 file=$3 t=${THREADS:-$NCPU}
  ((t <= c)) || t=$c
  timeout -k 5 $((secs + TIMEOUT + 15)) \
    wrk -t"$t" -c"$c" -d"${secs}s" --latency --timeout "${TIMEOUT}s" \
        -s "$HERE/post.lua" "$URL$ENDPOINT" >"$file" 2>"$file.err" || {
    cat "$file.err" >&2
    die "wrk failed at concurrency $c (output in $file)"
  }
  grep -q '^{"requests"' "$file" || { cat "$file" "$file.err" >&2; die "wrk printed no result at concurrency $c"; }
}

# The result's numbers for the log: requests, requests/s, errors.
brief() {
  python3 -c 'import json,sys
r = json.loads([l for l in open(sys.argv[1]) if l.startswith("{\"requests\"")][-1])
s = r["socket_errors"]
print("%d requests, %.1f req/s, p50 %.1f ms, p99 %.1f ms, non-2xx %d, socket errors %d"
      % (r["requests"], r["requests_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
         r["non_2xx"], sum(s.values())))' "$1"
}

set -- $CONCS
total=$((WARMUP + $# * DUR))
log "$URL$ENDPOINT at concurrency $CONCS, ${DUR}s each, ${WARMUP}s warm-up: about ${total}s; report in $OUT"
if ((WARMUP > 0)); then
  run_wrk "$1" "$WARMUP" "$OUT/warmup.txt"
  log "warm-up: $(brief "$OUT/warmup.txt")"
  if grep -q '^first error:' "$OUT/warmup.txt.err"; then
    log "warm-up $(grep -m1 '^first error:' "$OUT/warmup.txt.err")"
  fi
  python3 -c 'import json,sys
r = json.loads([l for l in open(sys.argv[1]) if l.startswith("{\"requests\"")][-1])
sys.exit(0 if r["requests"] > r["non_2xx"] + r["bad_body"] else 1)' "$OUT/warmup.txt" ||
    die "no request succeeded during the warm-up (wrong URL, endpoint, key or body?): stopping"
fi
for c in $CONCS; do
  run_wrk "$c" "$DUR" "$OUT/wrk-c$c.txt"
  log "concurrency $c: $(brief "$OUT/wrk-c$c.txt")"
  if grep -q '^first error:' "$OUT/wrk-c$c.txt.err"; then
    log "concurrency $c $(grep -m1 '^first error:' "$OUT/wrk-c$c.txt.err")"
  fi
done

CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
{
  echo "url=$URL"
  echo "endpoint=$ENDPOINT"
  echo "concurrency=$CONCS"
  echo "duration_s=$DUR"
  echo "warmup_s=$WARMUP"
  echo "timeout_s=$TIMEOUT"
  echo "wrk_threads=${THREADS:-min(cpus, concurrency)}"
  echo "body=${BODY:-default (text varies between requests)}"
  echo "model=$MODEL"
  echo "api_key_sent=$([[ -n "$KEY" ]] && echo yes || echo no)"
  echo "cache_control_no_cache=$([[ "$NO_CACHE" = 1 ]] && echo yes || echo no)"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "client_cpu=${CPU:-unknown}"
  echo "client_cpus=$NCPU"
  echo "client_host=$(uname -n)"
  echo "wrk_version=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "command=$SHOWN"
} >"$OUT/meta.txt"
python3 "$HERE/report.py" "$OUT"
log "wrote $OUT/summary.md, results.json, throughput.svg, latency.svg, errors.svg"
