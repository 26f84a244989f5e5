#!/usr/bin/env bash
# serve.sh AISERVE_BIN [FLAGS...] - what `make run` does: serves the model
# repository over HTTP in the foreground (Ctrl-C stops it gracefully).
#
# The repository is ./models (the bundled sentiment classifier, whose newest
# version is served) unless MODEL_PATH names another directory laid out as
# <name>/<version>/. Every other setting comes from the environment
# (AISERVE_*), aiserve.yaml via AISERVE_CONFIG, or the flags passed through
# (make run ARGS="--port 9000"). docs/configuration.md lists them all.
#
# The server itself prints the banner and the curl hints on stderr once it
# listens, with the host and port it resolved from all of those
# (AISERVE_BANNER=1 asks for them even when stderr is not a terminal;
# AISERVE_BANNER=0 turns them off).
set -euo pipefail
bin=${1:-build/aiserve}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export AISERVE_BANNER=${AISERVE_BANNER:-1}
exec "$bin" serve "$@"
