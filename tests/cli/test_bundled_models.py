"""test_bundled_models.py - the sentiment models shipped in models/sentiment/.

What a user of `make run` relies on: each version loads, agrees with the
PyTorch reference it was trained with (probabilities within 1e-4 and the same
label on a committed sample of SST-2 dev, made by
tools/make_sentiment_sample.py), reaches its accuracy target on the whole of
SST-2 dev as `aiserve eval` measures it, and stays small enough to ship.
"""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AISERVE_BIN", os.path.join(ROOT, "build", "aiserve"))
DEV_TSV = os.path.join(os.path.dirname(ROOT), "shared", "data", "sst2", "dev.tsv")
# version -> SST-2 dev accuracy target. Version 2 (target 0.83) joins when it
# is committed; no training run has reached its target yet (best 0.814).
VERSIONS = {"1": 0.80}


def model_dir(version):
    return os.path.join(ROOT, "models", "sentiment", version)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_agrees_with_the_training_reference(version, tmp_path):
    with open(os.path.join(ROOT, "tests", "fixtures", "sentiment", f"v{version}_dev_sample.json"),
              encoding="utf-8") as f:
        sample = json.load(f)
    texts = tmp_path / "texts.txt"
    texts.write_bytes("".join(c["sentence"] + "\n" for c in sample["cases"]).encode())
    proc = subprocess.run([BIN, "predict", "--model", model_dir(version), "--input", str(texts)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    out = [json.loads(l) for l in proc.stdout.decode().splitlines()]
    assert len(out) == len(sample["cases"])
    for case, got in zip(sample["cases"], out):
        assert got["probs"] == pytest.approx(case["probs"], abs=sample["tolerance"]), case["sentence"]
        best = max(range(len(case["probs"])), key=lambda i: case["probs"][i])
        assert got["label"] == sample["labels"][best], case["sentence"]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_reaches_its_dev_accuracy(version):
    proc = subprocess.run([BIN, "eval", "--model", model_dir(version), "--data", DEV_TSV,
                           "--format", "json"], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["evaluated"] == 872 and report["rejected"] == 0
    assert report["accuracy"] >= VERSIONS[version]
    assert report["labels"] == ["NEGATIVE", "POSITIVE"]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_is_a_complete_small_model_directory(version):
    d = model_dir(version)
    files = sorted(os.listdir(d))
    assert files == ["README.md", "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    assert sum(os.path.getsize(os.path.join(d, f)) for f in files) <= 25 * 1000 * 1000
    info = json.loads(subprocess.run([BIN, "info", "--model", d], capture_output=True, timeout=60,
                                     check=True).stdout)
    assert info["architecture"] == "BertForSequenceClassification" and info["dtype"] == "F16"
