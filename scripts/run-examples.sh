#!/usr/bin/env bash
# run-examples.sh AISERVE_BIN - what `make run` does until the HTTP server
# and the bundled sentiment models land: shows a model and classifies a few
# example sentences with the CLI.
#
# MODEL_PATH picks the model directory. The default is the newest bundled
# sentiment model (models/sentiment/2, else models/sentiment/1); without one,
# a test fixture with random weights, whose labels are meaningless. Point MODEL_PATH
# at any Hugging Face BERT/DistilBERT checkpoint directory, e.g. a download
# of distilbert-base-uncased-finetuned-sst-2-english.
set -euo pipefail
bin=${1:-build/aiserve}
root=$(cd "$(dirname "$0")/.." && pwd)
# the newest bundled version that is there
bundled=""
for v in 2 1; do
  if [[ -f "$root/models/sentiment/$v/model.safetensors" ]]; then bundled=$root/models/sentiment/$v; break; fi
done
if [[ -z "${MODEL_PATH:-}" && -n "$bundled" ]]; then
  model=$bundled
else
  model=${MODEL_PATH:-$root/tests/fixtures/models/distilbert-f32}
fi
if [[ -z "${MODEL_PATH:-}" && "$model" != "$bundled" ]]; then
  echo "note: serving the random-weight test fixture $model (labels are meaningless);"
  echo "      set MODEL_PATH=DIR to use a real checkpoint."
fi
echo "== aiserve info --model $model"
"$bin" info --model "$model"
echo "== aiserve predict --model $model ..."
"$bin" predict --model "$model" \
  "This film is a delight from start to finish." \
  "A dull, lifeless and overlong mess." \
  "The acting is fine, but the plot goes nowhere."
