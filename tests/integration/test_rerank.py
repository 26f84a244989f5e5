"""test_rerank.py - reranking with the real binary and a real cross-encoder
checkpoint (the XLM-RoBERTa fixture with one label, whose pair logits the
transformers reference computed: tests/fixtures/models/xlmr-reranker):
POST /rerank in TEI's shape and POST /v1/rerank in Cohere's and Jina's give
each (query, document) the sigmoid of the model's logit (the logit itself
with raw_scores), best first, the same score whatever else is in the batch;
top_n, return_text / return_documents, model names, version pins and the
cache work as on the other endpoints; a model with more than one label, and
malformed bodies, get a clear 4xx and change nothing."""

import json
import math
import os

import pytest

from harness import FIXTURES, SENTIMENT, assert_error, make_repo

RERANKER = os.path.join(FIXTURES, "xlmr-reranker")
with open(os.path.join(RERANKER, "expected.json"), encoding="utf-8") as f:
    EXPECTED = json.load(f)
TOL = EXPECTED["tolerance"]
# Pairs whose texts are both non-blank (a blank query or document is 422).
PAIRS = [p for p in EXPECTED["pairs"] if p["a"].strip() and p["b"].strip()]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    from harness import Server
    repo = make_repo(tmp_path_factory.mktemp("rerank"), reranker=RERANKER, sentiment=SENTIMENT)
    s = Server("--default-model", "reranker", "--no-rate-limit", repo=repo).start()
    yield s
    assert s.stop() == 0, s.output()


def test_each_pair_scores_as_the_reference(server):
    assert len(PAIRS) >= 5
    for p in PAIRS:
        logit = p["logits"][0]
        r = server.post("/rerank", json={"query": p["a"], "texts": [p["b"]]})
        assert r.status_code == 200, r.text
        (item,) = r.json()
        assert item["index"] == 0 and abs(item["score"] - sigmoid(logit)) < TOL, (p["a"], item, logit)
        raw = server.post("/rerank", json={"query": p["a"], "texts": [p["b"]], "raw_scores": True}).json()
        assert abs(raw[0]["score"] - logit) < TOL
        r = server.post("/v1/rerank", json={"model": "reranker", "query": p["a"], "documents": [p["b"]]})
        assert r.status_code == 200, r.text
        assert abs(r.json()["results"][0]["relevance_score"] - sigmoid(logit)) < TOL


def test_a_list_is_ranked_best_first(server):
    query = PAIRS[0]["a"]
    docs = [p["b"] for p in PAIRS] + ["an unrelated sentence about the weather", "short answer"]
    alone = [server.post("/rerank", json={"query": query, "texts": [d]}).json()[0]["score"] for d in docs]
    r = server.post("/rerank", json={"query": query, "texts": docs, "return_text": True})
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
    ranked = r.json()
    assert sorted(x["index"] for x in ranked) == list(range(len(docs)))
    assert [x["score"] for x in ranked] == sorted((x["score"] for x in ranked), reverse=True)
    for x in ranked:  # the same score as alone: batching changes nothing
        assert abs(x["score"] - alone[x["index"]]) < 1e-5 and x["text"] == docs[x["index"]]
    # Cohere's shape: documents as strings or {"text"}, top_n, documents back.
    body = {"query": query, "documents": [d if i % 2 else {"text": d} for i, d in enumerate(docs)], "top_n": 3}
    c = server.post("/v1/rerank", json=body).json()
    assert c["model"] == "reranker" and c["id"].startswith("rerank-") and c["usage"]["total_tokens"] > 0
    assert [x["index"] for x in c["results"]] == [x["index"] for x in ranked[:3]]
    assert all(x["document"] == {"text": docs[x["index"]]} for x in c["results"])
    assert "document" not in server.post("/v1/rerank", json=dict(body, return_documents=False)).json()["results"][0]


def test_cache_and_pins(server):
    body = {"query": "is it a charming journey?", "texts": ["a charming journey", "a dull trip"]}
    first = server.post("/rerank", json=body)
    again = server.post("/rerank", json=body)
    assert first.headers["X-Cache"] == "MISS" and again.headers["X-Cache"] == "HIT"
    assert again.json() == first.json()
    # Another query over the same texts is another answer, not a hit.
    other = server.post("/rerank", json=dict(body, query="is it a dull trip?"))
    assert other.headers["X-Cache"] == "MISS" and other.json() != first.json()
    assert server.post("/rerank", json=dict(body, raw_scores=True)).headers["X-Cache"] == "MISS"
    pinned = server.post("/rerank", json=body, headers={"X-Model-Version": "1"})
    assert pinned.status_code == 200 and pinned.json() == first.json()
    assert_error(server.post("/rerank", json=body, headers={"X-Model-Version": "7"}), 404, "version_not_found")


@pytest.mark.parametrize("path, body, status, code, words", [
    ("/rerank", {"texts": ["a"]}, 422, "invalid_request", "query is required"),
    ("/rerank", {"query": "q", "texts": []}, 422, "invalid_request", "texts must be a non-empty list"),
    ("/rerank", {"query": "q", "texts": "a"}, 422, "invalid_request", "texts must be a non-empty list"),
    ("/rerank", {"query": "q", "texts": ["a", 7]}, 422, "invalid_text", "texts[1] must be a string"),
    ("/rerank", {"query": "  ", "texts": ["a"]}, 422, "empty_text", "query must not be empty"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": "yes"}, 422, "invalid_request", "raw_scores"),
    ("/rerank", {"query": "q", "texts": ["a"], "model": "sentiment"}, 422, "unsupported_model", "has 2 labels"),
    ("/rerank", {"query": "q", "texts": ["a"], "model": "nope"}, 404, "model_not_found", "nope"),
    ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 422, "invalid_text", "documents[0] must be a string"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "invalid_request", "top_n"),
    ("/v1/rerank", ["q"], 422, "invalid_request", "JSON object"),
])
def test_bad_requests(server, path, body, status, code, words):
    err = assert_error(server.post(path, json=body), status, code)
    assert words in err["message"], err


def test_too_many_documents(server):
    err = assert_error(server.post("/rerank", json={"query": "q", "texts": ["a"] * 65}), 422, "too_many_inputs")
    assert "65 items" in err["message"]
