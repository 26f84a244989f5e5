"""test_predict.py - the model endpoints as a client of the seed service uses them.

POST /predict (text and texts forms), POST /v1/models/{name}/predict, GET
/v1/models and /v1/models/{name}, X-Request-ID, and agreement with the offline
CLI (`aiserve predict`), which is checked against PyTorch elsewhere.
"""

import json
import os
import subprocess

import pytest

from harness import (BIN, HEX32, SENTIMENT, assert_error, fixture_model, make_repo)

TEXTS = [
    "I love this movie, it was wonderful",
    "terrible, boring and far too long",
    "The service was okay I guess",
    "Ünïcödé façade — naïve café 😀 混合文字",
    "a",
    "not bad at all, actually quite good!!!",
]


def cli_predict(model_dir, texts):
    proc = subprocess.run([BIN, "predict", "--model", model_dir, "--threads", "1", *texts],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = [json.loads(l) for l in proc.stdout.decode().splitlines() if l.strip()]
    assert len(out) == len(texts)
    return out


@pytest.fixture(scope="module")
def reference():
    return cli_predict(SENTIMENT, TEXTS)


def test_single_text_matches_cli(server, reference):
    for text, ref in zip(TEXTS, reference):
        r = server.predict(text)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        body = r.json()
        assert set(body) == {"label", "confidence", "model", "model_version"}
        assert body["label"] == ref["label"]
        assert body["confidence"] == pytest.approx(max(ref["probs"]), abs=1e-6)
        assert body["model"] == "sentiment"
        assert body["model_version"] == "1"


def test_texts_list_matches_cli_in_order(server, reference):
    r = server.post("/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "model", "model_version"}
    assert (body["model"], body["model_version"]) == ("sentiment", "1")
    preds = body["predictions"]
    assert len(preds) == len(TEXTS)
    for p, ref in zip(preds, reference):
        assert set(p) == {"label", "confidence"}
        assert p["label"] == ref["label"]
        assert p["confidence"] == pytest.approx(max(ref["probs"]), abs=1e-6)


def test_texts_reversed_keeps_order(server, reference):
    r = server.post("/predict", json={"texts": TEXTS[::-1]})
    assert r.status_code == 200, r.text
    got = [(p["label"], p["confidence"]) for p in r.json()["predictions"]]
    want = [(ref["label"], max(ref["probs"])) for ref in reference[::-1]]
    for g, w in zip(got, want):
        assert g[0] == w[0]
        assert g[1] == pytest.approx(w[1], abs=1e-6)


def test_named_model_predict_equals_default(server, reference):
    r = server.post("/v1/models/sentiment/predict", json={"text": TEXTS[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == reference[0]["label"]
    assert body["confidence"] == pytest.approx(max(reference[0]["probs"]), abs=1e-6)
    assert (body["model"], body["model_version"]) == ("sentiment", "1")
    r = server.post("/v1/models/sentiment/predict", json={"texts": TEXTS[:2]})
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [x["label"] for x in reference[:2]]


def test_list_models(server):
    r = server.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    m = body["data"][0]
    assert m["name"] == "sentiment" and m["object"] == "model" and m["default"] is True
    assert len(m["versions"]) == 1
    v = m["versions"][0]
    assert v["version"] == "1"
    assert v["state"] == "available"
    assert v["architecture"] == "BertForSequenceClassification"
    assert v["labels"] == ["NEGATIVE", "POSITIVE"]


def test_get_model(server):
    r = server.get("/v1/models/sentiment")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "sentiment"
    assert body["default"] is True
    assert body["versions"][0]["labels"] == ["NEGATIVE", "POSITIVE"]
    assert body == server.get("/v1/models").json()["data"][0]


def test_get_unknown_model_404(server):
    assert_error(server.get("/v1/models/nope"), 404, "model_not_found")


def test_request_id_echoed_when_valid(server):
    for rid in ["abc", "A-Z.a_z:0-9", "x" * 64]:
        r = server.predict("hello", headers={"X-Request-ID": rid})
        assert r.status_code == 200
        assert r.headers["X-Request-ID"] == rid
    # errors carry it too, in the header and the body
    r = server.get("/v1/models/nope", headers={"X-Request-ID": "trace-123"})
    assert r.headers["X-Request-ID"] == "trace-123"
    assert r.json()["error"]["request_id"] == "trace-123"


@pytest.mark.parametrize("rid", ["x" * 65, "has space", "semi;colon", "<script>", "ünï", "a/b", "a,b"])
def test_request_id_replaced_when_invalid(server, rid):
    r = server.predict("hello", headers={"X-Request-ID": rid.encode("utf-8")})
    assert r.status_code == 200
    assert HEX32.match(r.headers["X-Request-ID"]), r.headers["X-Request-ID"]


def test_request_id_generated_and_unique(server):
    ids = {server.get("/health").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
    assert all(HEX32.match(i) for i in ids)


def test_keep_alive_one_connection(server):
    """Several requests on one keep-alive connection, answered in order."""
    import socket
    from harness import read_response
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for i, text in enumerate(TEXTS[:4]):
            body = json.dumps({"text": text}).encode()
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"X-Request-ID: ka-%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body))
            resp = read_response(s)
            assert resp is not None and resp.status == 200, resp
            assert resp.header("x-request-id") == "ka-%d" % i
            assert (resp.header("connection") or "").lower() != "close"


# -- several models ---------------------------------------------------------------


@pytest.fixture
def multi_repo(tmp_path):
    return make_repo(tmp_path,
                     sentiment=SENTIMENT,
                     tri=fixture_model("distilbert-relu-3label"),
                     embed=fixture_model("bert-base-embed"))


def test_several_models(server_factory, multi_repo):
    s = server_factory(repo=multi_repo)
    listing = s.get("/v1/models").json()
    by_name = {m["name"]: m for m in listing["data"]}
    assert set(by_name) == {"sentiment", "tri", "embed"}
    assert [n for n, m in by_name.items() if m["default"]] == ["sentiment"]
    assert by_name["tri"]["versions"][0]["labels"] == ["negative", "neutral", "positive"]
    assert all(m["versions"][0]["state"] == "available" for m in by_name.values())

    # /predict serves the default model ("sentiment" when there are several)
    r = s.predict("good")
    assert r.json()["model"] == "sentiment"

    # a named classifier agrees with the CLI on that model
    texts = ["this is great", "this is awful", "meh"]
    ref = cli_predict(fixture_model("distilbert-relu-3label"), texts)
    r = s.post("/v1/models/tri/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["model_version"]) == ("tri", "1")
    for p, want in zip(body["predictions"], ref):
        assert p["label"] == want["label"]
        assert p["confidence"] == pytest.approx(max(want["probs"]), abs=1e-6)

    # an embedding model cannot classify
    assert_error(s.post("/v1/models/embed/predict", json={"text": "hi"}), 422, "unsupported_model")
    assert_error(s.post("/v1/models/nope/predict", json={"text": "hi"}), 404, "model_not_found")


def test_default_model_flag_and_newest_version(server_factory, tmp_path):
    repo = make_repo(tmp_path, sentiment=SENTIMENT, tri=fixture_model("distilbert-relu-3label"))
    # a second, newer version of tri: the newest is the one served
    os.symlink(fixture_model("bert-multilabel"), repo / "tri" / "7")
    s = server_factory("--default-model", "tri", repo=repo)
    r = s.predict("whatever")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["model_version"]) == ("tri", "7")
    assert body["label"] in ("toxic", "spam", "off_topic")
    m = s.get("/v1/models/tri").json()
    assert m["default"] is True
    assert "7" in [v["version"] for v in m["versions"]]


def test_model_path_env(server_factory, tmp_path):
    repo = make_repo(tmp_path, only=fixture_model("distilbert-f32"))
    s = server_factory(repo=repo, use_repo_flag=False, env={"MODEL_PATH": str(repo)})
    r = s.predict("hello there")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "only"          # the only model is the default
    assert r.json()["label"] in ("NEGATIVE", "POSITIVE")


def test_version_pinning(server):
    """A version is pinned by the path or by X-Model-Version; every answer
    says which version served it (body and X-Model-Version)."""
    r = server.post("/v1/models/sentiment/versions/1/predict", json={"text": "a fine film"})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert r.headers["X-Model-Version"] == "1"
    r = server.post("/predict", json={"text": "a fine film"}, headers={"X-Model-Version": "1"})
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
    assert server.post("/predict", json={"text": "a fine film"}).headers["X-Model-Version"] == "1"
    assert_error(server.post("/v1/models/sentiment/versions/2/predict", json={"text": "x"}), 404,
                 "version_not_found")
    assert_error(server.post("/predict", json={"text": "x"}, headers={"X-Model-Version": "2"}), 404,
                 "version_not_found")
    for bad in ("0", "-1", "1.0", "", "no spaces"):
        assert_error(server.post("/predict", json={"text": "x"}, headers={"X-Model-Version": bad}), 422,
                     "invalid_request")
    assert_error(server.post("/v1/models/sentiment/versions/01/predict", json={"text": "x"}), 404)
    assert_error(server.post("/predict", json={"text": "x"}, headers={"X-Model-Version": "v1"}), 404,
                 "version_not_found")  # a valid alias name, but no such alias
    assert_error(server.post("/v1/models/nope/versions/1/predict", json={"text": "x"}), 404, "model_not_found")
    assert_error(server.get("/v1/models/sentiment/versions/1/predict"), 405, "method_not_allowed")
