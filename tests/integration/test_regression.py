"""test_regression.py - a classifier whose config.json says problem_type
"regression" (an STS-B style cross-encoder, tests/fixtures/models/
roberta-regression, whose logits the transformers reference computed) with
the real binary: /predict, /v1/models/{name}/predict and KServe infer give
the raw value as transformers' text-classification pipeline does (no
sigmoid: negative values stay negative), labelled id2label[0]; a regression
model with several labels gives the label of the largest value and that
value; /rerank and /v1/rerank keep TEI's rule (the sigmoid, the raw value
with raw_scores)."""

import json
import math
import os

import pytest

from harness import FIXTURES, make_repo

STSB = os.path.join(FIXTURES, "roberta-regression")
THREE = os.path.join(FIXTURES, "roberta-cls")  # three labels, made a regression model below


def expected(path):
    with open(os.path.join(path, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


REF = expected(STSB)
TOL = REF["tolerance"]
# Texts the endpoints take (not blank), a negative value among them.
CASES = [c for c in REF["cases"] if c["text"].strip() and "\0" not in c["text"]]
PAIRS = [p for p in REF["pairs"] if p["a"].strip() and p["b"].strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from harness import Server
    tmp = tmp_path_factory.mktemp("regression")
    three = tmp / "three"
    three.mkdir()
    for f in os.listdir(THREE):
        if f != "config.json":
            os.symlink(os.path.join(THREE, f), three / f)
    with open(os.path.join(THREE, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    (three / "config.json").write_text(json.dumps(dict(config, problem_type="regression")))
    repo = make_repo(tmp, stsb=STSB, three=str(three))
    s = Server("--default-model", "stsb", "--no-rate-limit", repo=repo).start()
    yield s
    assert s.stop() == 0, s.output()


def test_predict_gives_the_raw_value(server):
    assert any(c["logits"][0] < 0 for c in CASES)  # a sigmoid would make it positive
    texts = [c["text"] for c in CASES]
    for path in ("/predict", "/v1/models/stsb/predict"):
        r = server.post(path, json={"texts": texts})
        assert r.status_code == 200, r.text
        for c, p in zip(CASES, r.json()["predictions"]):
            assert p["label"] == "LABEL_0"
            assert abs(p["confidence"] - c["logits"][0]) < TOL, (c["text"], p)
    one = server.post("/predict", json={"text": CASES[0]["text"]}).json()
    assert abs(one["confidence"] - CASES[0]["logits"][0]) < TOL and one["model"] == "stsb"


def test_kserve_gives_the_raw_value(server):
    texts = [c["text"] for c in CASES[:4]]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    r = server.post("/v2/models/stsb/infer", json=body)
    assert r.status_code == 200, r.text
    labels, values = r.json()["outputs"]
    assert labels["data"] == ["LABEL_0"] * len(texts) and values["shape"] == [len(texts), 1]
    for c, v in zip(CASES, values["data"]):
        assert abs(v - c["logits"][0]) < TOL


def test_several_labels_give_the_largest_value(server):
    ref = expected(THREE)
    labels = ref["model"]["labels"]
    cases = [c for c in ref["cases"] if c["text"].strip() and "\0" not in c["text"]]
    r = server.post("/v1/models/three/predict", json={"texts": [c["text"] for c in cases]})
    assert r.status_code == 200, r.text
    for c, p in zip(cases, r.json()["predictions"]):
        best = max(range(len(labels)), key=lambda i: c["logits"][i])
        assert p["label"] == labels[best] and abs(p["confidence"] - c["logits"][best]) < TOL


def test_rerank_keeps_the_sigmoid(server):
    for p in PAIRS:
        logit = p["logits"][0]
        r = server.post("/rerank", json={"query": p["a"], "texts": [p["b"]]})
        assert r.status_code == 200, r.text
        assert abs(r.json()[0]["score"] - 1 / (1 + math.exp(-logit))) < TOL
        raw = server.post("/rerank", json={"query": p["a"], "texts": [p["b"]], "raw_scores": True}).json()
        assert abs(raw[0]["score"] - logit) < TOL
        c = server.post("/v1/rerank", json={"query": p["a"], "documents": [p["b"]]}).json()
        assert abs(c["results"][0]["relevance_score"] - 1 / (1 + math.exp(-logit))) < TOL
