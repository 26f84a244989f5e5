#!/usr/bin/python3
"""make_sentiment_sample.py - the committed sample that CI checks the bundled
sentiment models against, so CI needs no PyTorch.

    /usr/bin/python3 tools/make_sentiment_sample.py MODEL_DIR DEV_TSV OUT_JSON [--every 8]

Takes every N-th sentence of DEV_TSV (exactly as in the file, trailing space
included), runs the PyTorch reference (tools/hf_reference.py, float64, on the
weights as stored) and writes {"model", "tolerance", "labels", "cases":
[{"sentence", "gold", "probs", "logits"}]}. tests/cli/test_bundled_models.py
checks `aiserve predict` against it; tools/check_sentiment_agreement.py does
the same over the whole file.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_sentiment_agreement import load_model, read_tsv, reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("tsv")
    ap.add_argument("out")
    ap.add_argument("--every", type=int, default=8)
    args = ap.parse_args()
    sents, gold = read_tsv(args.tsv)
    sents, gold = sents[::args.every], gold[::args.every]
    model, config, tok, max_len = load_model(args.model_dir)
    probs, logits = reference(model, tok, sents, max_len)
    labels = [config["id2label"][i] for i in range(len(config["id2label"]))]
    cases = [{"sentence": s, "gold": g, "probs": [round(float(p), 8) for p in pr],
              "logits": [round(float(x), 8) for x in lg]}
             for s, g, pr, lg in zip(sents, gold, probs.tolist(), logits.tolist())]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"model": os.path.normpath(args.model_dir), "tolerance": 1e-4, "labels": labels,
                   "cases": cases}, f, indent=0, ensure_ascii=False)
        f.write("\n")
    print(f"{args.out}: {len(cases)} sentences")


if __name__ == "__main__":
    main()
