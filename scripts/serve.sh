#!/usr/bin/env bash
# serve.sh AISERVE_BIN [FLAGS...] - what `make run` does: serves the model
# repository over HTTP in the foreground (Ctrl-C stops it gracefully).
#
# The repository is ./models (the bundled sentiment classifier, whose newest
# version is served) unless MODEL_PATH names another directory laid out as
# <name>/<version>/. Every other setting comes from the environment
# (AISERVE_*), aiserve.yaml via AISERVE_CONFIG, or the flags passed through
# (make run ARGS="--port 9000"). docs/configuration.md lists them all.
set -euo pipefail
bin=${1:-build/aiserve}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
port=${AISERVE_PORT:-8000}
cat >&2 <<MSG
aiserve: serving ${MODEL_PATH:-./models} on http://127.0.0.1:$port (Ctrl-C to stop). Try:
  curl -s localhost:$port/predict -H 'Content-Type: application/json' -d '{"text": "a gripping, beautifully made film"}'
  curl -s localhost:$port/v1/models
  curl -s localhost:$port/metrics
MSG
exec "$bin" serve "$@"
