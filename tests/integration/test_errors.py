"""test_errors.py - every error status of the DESIGN.md table that this server has.

400 invalid JSON / UTF-8, 404 route and model, 405 with Allow, 413, 431, 422
schema errors, 503 not ready and overloaded (with Retry-After), 504 deadline.
Each error has the one shape {"error": {message, type, code, request_id}} and
leaves the process serving.
"""

import concurrent.futures
import json
import os
import threading

import pytest
import requests

from harness import SENTIMENT, assert_error, make_repo, sample


# -- 400 -----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"{bad", b'{"text": "a"', b'{"text": "a"} trailing', b"", b"   ", b"{'text': 'single quotes'}",
    b'{"text": NaN}', b'{"text": "a",}', b"\xef\xbb\xbf" b'{"text": "bom"}',
])
def test_400_invalid_json(server, body):
    r = server.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")
    server.assert_serving()


@pytest.mark.parametrize("body", [
    b'{"text": "\xff\xfe"}',                 # bytes that are never UTF-8
    b'{"text": "caf\xe9"}',                  # Latin-1
    b'{"text": "\xc0\xaf"}',                 # overlong encoding of '/'
    b'{"text": "\xed\xa0\x80"}',             # UTF-8-encoded surrogate
    b'{"text": "\xf4\x90\x80\x80"}',         # above U+10FFFF
    b'{"text": "ok", "\xff": 1}',            # in a key
])
def test_400_invalid_utf8(server, body):
    r = server.post("/predict", data=body, headers={"Content-Type": "application/json"})
    err = assert_error(r, 400)
    assert err["code"] == "invalid_utf8", err
    server.assert_serving()


# -- 404 / 405 -----------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"), ("POST", "/nope"), ("GET", "/v1"), ("GET", "/v1/models/sentiment/extra"),
    ("POST", "/v1/models/sentiment/versions/1/predict/x"), ("GET", "/health/x"),
])
def test_404_unknown_route(server, method, path):
    r = requests.request(method, server.url(path), timeout=10, json={"text": "x"})
    assert_error(r, 404)
    server.assert_serving()


def test_404_unknown_model(server):
    assert_error(server.post("/v1/models/nope/predict", json={"text": "x"}), 404, "model_not_found")
    assert_error(server.get("/v1/models/nope"), 404, "model_not_found")


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/predict", "POST"), ("PUT", "/predict", "POST"), ("DELETE", "/predict", "POST"),
    ("POST", "/health", "GET"), ("POST", "/health/live", "GET"), ("POST", "/health/ready", "GET"),
    ("POST", "/metrics", "GET"), ("POST", "/v1/models", "GET"), ("DELETE", "/v1/models/sentiment", "GET"),
    ("GET", "/v1/models/sentiment/predict", "POST"),
])
def test_405_with_allow(server, method, path, allow):
    r = requests.request(method, server.url(path), timeout=10)
    assert_error(r, 405, "method_not_allowed")
    allowed = {m.strip() for m in r.headers.get("Allow", "").split(",")}
    assert allow in allowed, r.headers
    server.assert_serving()


# -- 413 / 431 -----------------------------------------------------------------

def test_413_body_too_large(server_factory):
    s = server_factory("--max-body-size", "1KiB")
    r = s.post("/predict", json={"text": "x" * 2000})
    assert_error(r, 413, "body_too_large")
    s.assert_serving()
    r = s.post("/predict", json={"text": "ok"})
    assert r.status_code == 200


def test_413_default_limit(server):
    r = server.post("/predict", data=b'{"text": "' + b"a" * (1024 * 1024 + 10) + b'"}',
                    headers={"Content-Type": "application/json"})
    assert_error(r, 413, "body_too_large")
    server.assert_serving()


def test_413_declared_length(server):
    # A client that only declares a huge length is answered at once, without
    # waiting for (or reading) the body.
    resp = server.raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000000\r\n\r\n{", timeout=5)
    assert resp is not None, "connection closed without a response"
    assert_error(resp, 413, "body_too_large")
    server.assert_serving()


def test_413_chunked_body(server_factory):
    s = server_factory("--max-body-size", "1KiB")

    def gen():
        yield b'{"text": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'
    r = s.post("/predict", data=gen(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "body_too_large")
    s.assert_serving()


def test_431_headers_too_large(server):
    r = server.get("/health", headers={"X-Big": "a" * 20000})
    assert r.status_code == 431, (r.status_code, r.text[:300])
    r = server.get("/health", headers={"X-H%d" % i: "v" * 50 for i in range(400)})
    assert r.status_code == 431, (r.status_code, r.text[:300])
    server.assert_serving()


def test_431_error_shape(server):
    r = server.get("/health", headers={"X-Big": "a" * 20000})
    assert_error(r, 431)


# -- 422 -----------------------------------------------------------------------

@pytest.mark.parametrize("payload,code", [
    ({}, "invalid_request"),
    ({"txt": "typo"}, "invalid_request"),
    ([], "invalid_request"),
    (["a", "b"], "invalid_request"),
    ("just a string", "invalid_request"),
    (42, "invalid_request"),
    (None, "invalid_request"),
    ({"text": 123}, "invalid_text"),
    ({"text": None}, ("invalid_text", "invalid_request")),
    ({"text": True}, "invalid_text"),
    ({"text": ["a"]}, "invalid_text"),
    ({"text": {"a": 1}}, "invalid_text"),
    ({"texts": "not a list"}, ("invalid_request", "invalid_text")),
    ({"texts": {"a": "b"}}, ("invalid_request", "invalid_text")),
    ({"texts": [1, 2]}, "invalid_text"),
    ({"texts": ["ok", None]}, "invalid_text"),
    ({"texts": ["ok", ["nested"]]}, "invalid_text"),
    ({"text": ""}, "empty_text"),
    ({"texts": ["ok", ""]}, "empty_text"),
])
def test_422_schema(server, payload, code):
    r = server.post("/predict", data=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert_error(r, 422, code)
    server.assert_serving()


def test_422_same_on_named_route(server):
    assert_error(server.post("/v1/models/sentiment/predict", json={"text": 5}), 422, "invalid_text")
    assert_error(server.post("/v1/models/sentiment/predict", json={"text": ""}), 422, "empty_text")


def test_422_limits(server_factory):
    s = server_factory("--max-text-length", "20", "--max-inputs", "3")
    assert s.predict("a" * 20).status_code == 200
    assert s.predict("é" * 20).status_code == 200          # code points, not bytes
    assert_error(s.predict("a" * 21), 422, "text_too_long")
    assert_error(s.predict("😀" * 21), 422, "text_too_long")
    assert s.post("/predict", json={"texts": ["a", "b", "c"]}).status_code == 200
    assert_error(s.post("/predict", json={"texts": ["a", "b", "c", "d"]}), 422, "too_many_inputs")
    assert_error(s.post("/predict", json={"texts": ["a", "b" * 21]}), 422, "text_too_long")
    s.assert_serving()


def test_422_default_limits(server):
    assert_error(server.predict("a" * 10001), 422, "text_too_long")
    assert server.predict("a " * 5000).status_code == 200   # exactly 10,000 characters
    assert_error(server.post("/predict", json={"texts": ["a"] * 65}), 422, "too_many_inputs")
    assert server.post("/predict", json={"texts": ["a"] * 64}).status_code == 200


# -- 503 -----------------------------------------------------------------------

def test_503_broken_default_model(server_factory, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(SENTIMENT):
        os.symlink(os.path.join(SENTIMENT, f), bad / f)
    os.unlink(bad / "config.json")
    (bad / "config.json").write_text("{this is not json")
    repo = make_repo(tmp_path, sentiment=str(bad))
    s = server_factory(repo=repo, wait="live")
    s.wait_log("model_load_failed", model="sentiment")
    r = s.get("/health/ready")
    assert r.status_code == 503
    r = s.get("/health")
    assert r.status_code == 503
    assert r.json()["model_loaded"] is False
    assert s.get("/health/live").status_code == 200
    assert_error(s.predict("hello"), 503)
    m = s.get("/v1/models/sentiment")
    assert m.status_code == 200
    assert m.json()["versions"][0]["state"] == "failed"
    # and the process keeps answering
    assert s.get("/metrics").status_code == 200


def long_text(i):
    return ("request %d " % i) + " ".join(["word%d" % (j % 50) for j in range(110)])


def test_503_overloaded_with_retry_after(server_factory):
    s = server_factory("--max-queue-size", "1", "--max-batch-size", "1", "--max-inputs", "1",
                       "--max-queue-delay-us", "0")
    n = 64
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(10)
        return requests.post(s.url("/predict"), json={"text": long_text(i)}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 503}, statuses
    shed = [r for r in results if r.status_code == 503]
    assert shed, "no request was shed with a queue of 1: %r" % statuses
    assert 200 in statuses
    for r in shed:
        assert_error(r, 503, "overloaded")
        ra = r.headers.get("Retry-After")
        assert ra is not None and ra.isdigit() and int(ra) >= 1, r.headers
    s.assert_serving()
    m = s.metrics()
    assert sample(m, "model_errors_total", error_type="queue_full") == len(shed)
    assert sample(m, "prediction_requests_total", endpoint="/predict", status="503") == len(shed)


# -- 504 -----------------------------------------------------------------------

def test_504_deadline(server_factory):
    # The batcher holds a lone text up to 200 ms waiting for company; the
    # deadline is 1 ms, so it passes while the text is queued.
    s = server_factory("--request-timeout", "1ms", "--max-queue-delay-us", "200ms")
    r = s.predict("too slow")
    assert_error(r, 504, "timeout")
    r = s.post("/v1/models/sentiment/predict", json={"texts": ["a", "b"]})
    assert_error(r, 504, "timeout")
    m = s.metrics()
    assert sample(m, "model_errors_total", error_type="timeout") == 2
    assert sample(m, "prediction_requests_total", endpoint="/predict", status="504") == 1
    assert sample(m, "prediction_requests_total", endpoint="/v1/models/{name}/predict", status="504") == 1
    # health and metrics are not subject to the inference deadline
    assert s.get("/health").status_code == 200
    assert s.get("/metrics").status_code == 200
    assert s.alive()
