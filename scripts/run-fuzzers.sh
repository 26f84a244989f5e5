#!/usr/bin/env bash
# run-fuzzers.sh BUILD SECONDS - runs every libFuzzer target built in BUILD
# for SECONDS each, starting from a scratch copy of its committed corpus.
# Exits non-zero if any target finds a crash, leak or sanitizer error.
set -euo pipefail
build=$(cd "$1" && pwd); seconds=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
status=0
# Undefined behaviour stops a run (the fuzz build lets UBSan recover by
# default, which would only log it).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
for bin in "$build"/tests/fuzz/fuzz_*; do
  [[ -x "$bin" ]] || continue
  name=$(basename "$bin"); short=${name#fuzz_}
  work=$(mktemp -d)
  cp -r "$root/tests/fuzz/corpus/$short/." "$work/" 2>/dev/null || true
  echo "fuzz: $name for ${seconds}s"
  if ! (cd "$build" && "$bin" -max_total_time="$seconds" -max_len=65536 \
        -artifact_prefix="$build/$name-" "$work" 2>"$build/$name.log"); then
    echo "fuzz: $name FAILED; see $build/$name.log"; tail -40 "$build/$name.log"; status=1
  else
    tail -1 "$build/$name.log"
  fi
  rm -rf "$work"
done
exit $status
