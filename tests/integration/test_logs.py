"""test_logs.py - the JSON log: one access line per request with the documented
fields, request bodies and secrets never logged at info, and no client input
that can break a line.
"""

import json

import requests

from harness import HEX32, wait_until

SECRET = "SECRET-BODY-TEXT-7f3a9c"
API_KEY = "sk-LEAKCHECK-0123456789abcdef"


def _access_lines(s, rid, timeout=5):
    """The access log lines for one request id, once there is one (it is
    written just after the answer)."""
    return wait_until(lambda: [e for e in s.logs("request") if e.get("request_id") == rid] or None, timeout,
                      "an access log line for request %s" % rid)


def test_access_log_fields(server_factory):
    s = server_factory()
    r = s.post("/predict", json={"texts": ["good", "bad", "ok"]}, headers={"X-Request-ID": "log-check-1"})
    assert r.status_code == 200
    lines = _access_lines(s, "log-check-1")
    assert len(lines) == 1, lines
    e = lines[0]
    for field in ("time", "level", "msg", "request_id", "method", "path", "status", "duration_ms",
                  "model", "version", "batch_size", "client"):
        assert field in e, (field, e)
    assert e["level"] == "info"
    assert e["method"] == "POST" and e["path"] == "/predict" and e["status"] == 200
    assert isinstance(e["duration_ms"], (int, float)) and e["duration_ms"] >= 0
    assert e["model"] == "sentiment" and str(e["version"]) == "1"
    assert isinstance(e["batch_size"], int) and 1 <= e["batch_size"] <= 3
    assert e["client"].startswith("127.0.0.1")

    # errors and non-model routes are logged too, each exactly once, with their id
    cases = [("GET", "/health", None, 200), ("GET", "/nope", None, 404),
             ("POST", "/predict", {"text": 7}, 422), ("GET", "/predict", None, 405),
             ("POST", "/v1/models/zzz/predict", {"text": "x"}, 404)]
    for i, (method, path, body, status) in enumerate(cases):
        rid = "log-case-%d" % i
        r = requests.request(method, s.url(path), json=body, headers={"X-Request-ID": rid}, timeout=10)
        assert r.status_code == status
        lines = _access_lines(s, rid)
        assert len(lines) == 1, (rid, lines)
        assert lines[0]["status"] == status and lines[0]["path"] == path and lines[0]["method"] == method

    # a generated id is the one in the response header
    r = s.get("/health/live")
    rid = r.headers["X-Request-ID"]
    assert HEX32.match(rid)
    assert len(_access_lines(s, rid)) == 1


def test_no_access_log(server_factory):
    s = server_factory("--no-access-log")
    s.predict("hello")
    s.get("/nope")
    assert s.stop() == 0            # every line it wrote is read by now
    assert s.logs("request") == []
    assert s.logs("ready") and s.logs("stopped")    # lifecycle events still logged


def test_bodies_and_secrets_never_logged_at_info(server_factory):
    s = server_factory()
    h = {"X-API-Key": API_KEY, "Authorization": "Bearer " + API_KEY}
    s.post("/predict", json={"text": "my text is " + SECRET}, headers=h)
    s.post("/predict", json={"texts": ["a", SECRET]}, headers=h)
    s.post("/v1/models/sentiment/predict", json={"text": SECRET}, headers=h)
    s.post("/predict", data=b'{"text": "' + SECRET.encode() + b'"', headers=h)            # invalid JSON
    s.post("/predict", json={"text": SECRET * 1000}, headers=h)                            # too long
    s.post("/predict", json={"texts": [SECRET, 5]}, headers=h)                              # wrong type
    s.post("/predict", json={SECRET: "x"}, headers=h)                                       # schema
    s.post("/predict", data=b'{"text": "' + SECRET.encode() + b'\xff"}', headers=h)       # bad UTF-8
    s.post("/v1/models/embed/predict", json={"text": SECRET}, headers=h)
    rc = s.stop()                   # every line it wrote is read by now
    assert rc == 0
    out = "\n".join(s.raw_lines()) + "".join(s._err)
    assert SECRET not in out
    assert API_KEY not in out


def test_every_log_line_is_json_whatever_the_client_sends(server_factory):
    s = server_factory()
    nasty = [
        b"GET /v1/models/%22%7D%0A%7B%22level%22:%22error HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xff\xfe\x01\x1b[31m HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: \"}\n{\"evil\":1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: \\u0000\\\"\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\"\n\"",
        b"GET /\xc3\xa9\xf0\x9f\x98\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for raw in nasty:
        s.raw(raw)
    s.assert_serving()
    s.stop()
    for line in s.raw_lines():
        obj = json.loads(line)          # raises on a broken line
        assert isinstance(obj, dict) and "msg" in obj
        assert "evil" not in obj
