#!/usr/bin/env bash
# install-deps.sh - installs the Debian 12 packages aiserve needs, and only
# those that are missing (idempotent: a second run installs nothing).
#
#   scripts/install-deps.sh          build + unit tests + fuzzing
#   scripts/install-deps.sh --bench  also what bench/engine needs (PyTorch,
#                                    ONNX, Node.js for onnxruntime-node)
#   scripts/install-deps.sh --tools  also what tools/ needs (PyTorch)
set -euo pipefail

packages=(
  gcc make cmake pkg-config       # toolchain
  libopenblas-openmp-dev          # GEMM (cblas); the OpenMP build, see docs/engine.md
  libjansson-dev                  # JSON (config.json, tokenizer.json, CLI output)
  libutf8proc-dev                 # Unicode normalisation and categories
  libevent-dev                    # HTTP server (evhttp), event loops, timers
  libyaml-dev                     # configuration file (aiserve.yaml)
  libssl-dev                      # SHA-256 and random bytes for API keys (libcrypto); TLS (libssl)
  libxxhash-dev                   # XXH3: response cache keys, store shards
  libhiredis-dev                  # Redis client (async, on libevent): shared cache and limits
  libsqlite3-dev                  # batch jobs persisted on one machine (WAL)
  libcurl4-openssl-dev            # upstream LLM calls (multi interface, on the libevent loops)
  zlib1g-dev                      # inflates the embedded web pages for clients that do not take gzip
  libzip-dev                      # reads pytorch_model.bin (PyTorch's zip checkpoints)
  redis-server                    # the real Redis the integration tests start on loopback
  libcmocka-dev                   # unit tests
  python3-pytest python3-requests # command-line and server tests (tests/cli, tests/integration)
  openssl curl                    # HTTPS tests: test certificates made at run time, curl as the client
  nodejs npm                      # builds the embedded web pages (web/); the openai npm client in the tests
  prometheus                      # promtool: tests check /metrics with `promtool check metrics`; the alert rules
  haproxy                         # the load balancer of deploy/haproxy, started by the tests
  chromium                        # the browser tests (/docs) drive it headless through playwright-core
  docker-compose                  # `docker-compose config` validates deploy/compose.yaml (no engine needed)
  clang libclang-rt-14-dev        # libFuzzer targets and sanitizer runtimes
)
for arg in "$@"; do
  case "$arg" in
    --bench) packages+=(python3-torch python3-onnx python3-numpy
                        wrk python3-fastapi python3-uvicorn python3-redis) ;;
    --tools) packages+=(python3-torch python3-numpy) ;;
    *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
# node and npm may come from elsewhere (the CI image ships its own, which
# Debian's npm package would conflict with): a command on PATH is enough.
if command -v node >/dev/null; then missing=("${missing[@]/nodejs}"); fi
if command -v npm >/dev/null; then missing=("${missing[@]/npm}"); fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
