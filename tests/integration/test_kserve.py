"""test_kserve.py - the Open Inference Protocol (KServe v2) REST endpoints with
the real binary: server and model metadata, health and readiness, and infer
requests and responses checked field by field against /predict (shapes [N]
and [N, 1], nested data, versions in the path, the outputs filter, the id
echoed, cached answers that differ by id), and the errors."""

import pytest

from harness import assert_error

TEXTS = ["a wonderful , moving film .", "dull and far too long .", "it 's fine ."]


def infer_body(texts, shape=None, data=None, **extra):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape or [len(texts)],
                        "data": texts if data is None else data}]}
    body.update(extra)
    return body


def test_metadata_and_health(server):
    r = server.get("/v2")
    assert r.status_code == 200
    assert r.json()["name"] == "aiserve" and r.json()["extensions"] == []
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    m = server.get("/v2/models/sentiment").json()
    assert m["name"] == "sentiment" and m["platform"] == "aiserve" and m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert m["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert server.get("/v2/models/sentiment/versions/1").json() == m
    assert server.get("/v2/models/sentiment/ready").json() == {"name": "sentiment", "ready": True}
    assert server.get("/v2/models/sentiment/versions/1/ready").status_code == 200
    assert_error(server.get("/v2/models/nope"), 404, "model_not_found")
    assert_error(server.get("/v2/models/nope/ready"), 404, "model_not_found")
    assert_error(server.get("/v2/models/sentiment/versions/7"), 404, "version_not_found")
    assert_error(server.get("/v2/models/sentiment/versions/x/ready"), 404, "not_found")
    assert_error(server.post("/v2/models/sentiment", json={}), 405, "method_not_allowed")


def test_infer_matches_predict(server):
    want = server.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    r = server.post("/v2/models/sentiment/infer", json=infer_body(TEXTS, id="req-42"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "sentiment" and body["model_version"] == "1" and body["id"] == "req-42"
    labels, probs = body["outputs"]
    assert labels == {"name": "label", "datatype": "BYTES", "shape": [3], "data": [p["label"] for p in want]}
    assert probs["name"] == "probabilities" and probs["datatype"] == "FP32" and probs["shape"] == [3, 2]
    assert len(probs["data"]) == 6
    for i, p in enumerate(want):
        row = probs["data"][2 * i:2 * i + 2]
        assert abs(sum(row) - 1) < 1e-5
        assert max(row) == pytest.approx(p["confidence"], abs=1e-7)
    # [N, 1] with nested data, a version in the path, only the labels
    r = server.post("/v2/models/sentiment/versions/1/infer",
                    json=infer_body(TEXTS, shape=[3, 1], data=[[t] for t in TEXTS], outputs=[{"name": "label"}]))
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert "id" not in r.json()
    # cached answers keep each request's id
    r1 = server.post("/v2/models/sentiment/infer", json=infer_body(TEXTS[:1], id="a"))
    r2 = server.post("/v2/models/sentiment/infer", json=infer_body(TEXTS[:1], id="b"))
    assert r1.json()["id"] == "a" and r2.json()["id"] == "b"
    assert r1.json()["outputs"] == r2.json()["outputs"]


@pytest.mark.parametrize("body, status, code", [
    ({"inputs": []}, 422, "invalid_request"),
    ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 422, "invalid_request"),
    (infer_body(TEXTS, shape=[2]), 422, "invalid_request"),
    (infer_body(TEXTS, shape=[3, 2]), 422, "invalid_request"),
    (infer_body(["ok", 5], shape=[2]), 422, "invalid_text"),
    (infer_body(["ok", "  "], shape=[2]), 422, "empty_text"),
    (infer_body(TEXTS, outputs=[{"name": "logits"}]), 422, "invalid_request"),
    (infer_body(TEXTS, id=7), 422, "invalid_request"),
])
def test_infer_errors(server, body, status, code):
    assert_error(server.post("/v2/models/sentiment/infer", json=body), status, code)


def test_infer_unknown_model_or_version(server):
    assert_error(server.post("/v2/models/nope/infer", json=infer_body(TEXTS)), 404, "model_not_found")
    assert_error(server.post("/v2/models/sentiment/versions/9/infer", json=infer_body(TEXTS)), 404,
                 "version_not_found")
    assert_error(server.get("/v2/models/sentiment/infer"), 405, "method_not_allowed")
    assert_error(server.post("/v2/models/sentiment/infer", data=b"{"), 400, "invalid_json")
