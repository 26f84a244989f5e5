"""test_cors.py - CORS with the real binary: nothing allowed by default, an
allow-list (the Origin echoed with Vary: Origin, exposed headers, errors
readable too), preflights (204 with methods, headers and max age; 400
cors_forbidden for a disallowed origin, method or header; no API key
needed), "*" mode, and origins the configuration refuses.
"""

import json
import os
import subprocess

import pytest

from harness import BIN, MODELS, assert_error, create_key

A = "https://app.example.com"
B = "http://localhost:3000"
EXPOSED = ["X-Request-ID", "X-Cache", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
           "Retry-After", "X-Route-Reason", "X-Gateway-Model", "X-Gateway-Fallbacks", "X-Semantic-Similarity"]


def preflight(s, path, origin, method="POST", headers=None):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return s.options(path, headers=h)


def names(value):
    return [v.strip().lower() for v in (value or "").split(",") if v.strip()]


def test_nothing_allowed_by_default(server):
    r = server.predict("a fine film", headers={"Origin": A})
    assert r.status_code == 200
    for h in ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Vary"):
        assert h not in r.headers, r.headers
    r = preflight(server, "/predict", A, headers="content-type")
    err = assert_error(r, 400, "cors_forbidden")
    assert A in err["message"] and "cors.allowed_origins" in err["message"]
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Access-Control-Allow-Methods" not in r.headers
    # OPTIONS that is not a preflight is routed as before.
    assert_error(server.options("/predict"), 405, "method_not_allowed")
    assert_error(server.options("/predict", headers={"Origin": A}), 405, "method_not_allowed")


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory):
    from harness import Server
    s = Server("--cors-allowed-origins", " %s , %s" % (A, B), "--cors-max-age", "90s").start()
    yield s
    assert s.stop() == 0, s.output()


def test_allowed_origin_is_echoed(cors_server):
    s = cors_server
    for origin in (A, B):
        r = s.predict("a fine film", headers={"Origin": origin})
        assert r.status_code == 200
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert "origin" in names(r.headers["Vary"])
        assert names(r.headers["Access-Control-Expose-Headers"]) == [h.lower() for h in EXPOSED]
        assert "Access-Control-Allow-Credentials" not in r.headers
    # Errors are readable by the page too.
    r = s.post("/predict", json={"text": 5}, headers={"Origin": A})
    assert_error(r, 422, "invalid_text")
    assert r.headers["Access-Control-Allow-Origin"] == A
    r = s.get("/nowhere", headers={"Origin": A})
    assert_error(r, 404, "not_found")
    assert r.headers["Access-Control-Allow-Origin"] == A


def test_other_origins_get_nothing_but_vary(cors_server):
    s = cors_server
    for origin in ("https://evil.example", A + ":8443", A.upper(), "null", A + "/"):
        r = s.predict("a fine film", headers={"Origin": origin})
        assert r.status_code == 200                        # the server answers; the browser hides it
        assert "Access-Control-Allow-Origin" not in r.headers, origin
        assert "Access-Control-Expose-Headers" not in r.headers
        assert "origin" in names(r.headers["Vary"])
    r = s.get("/health")                                   # no Origin: still Vary, for shared caches
    assert "origin" in names(r.headers["Vary"])
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("path,method", [
    ("/predict", "POST"),
    ("/v1/models/sentiment/predict", "POST"),
    ("/v1/models", "GET"),
    ("/v1/models/sentiment", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
])
def test_preflight_answers(cors_server, path, method):
    r = preflight(cors_server, path, A, method, headers="content-type,x-api-key, authorization,X-Request-ID")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == A
    assert "origin" in names(r.headers["Vary"])
    assert r.headers["Access-Control-Allow-Methods"] == method
    allowed = names(r.headers["Access-Control-Allow-Headers"])
    for h in ("content-type", "authorization", "x-api-key", "x-request-id", "x-user-id", "cache-control"):
        assert h in allowed
    assert r.headers["Access-Control-Max-Age"] == "90"
    assert r.headers["X-Request-ID"]


def test_preflight_refusals(cors_server):
    s = cors_server
    r = preflight(s, "/predict", "https://evil.example")
    err = assert_error(r, 400, "cors_forbidden")
    assert "origin" in err["message"] and "https://evil.example" in err["message"]
    assert "Access-Control-Allow-Origin" not in r.headers and "Access-Control-Allow-Methods" not in r.headers
    err = assert_error(preflight(s, "/predict", A, "DELETE"), 400, "cors_forbidden")
    assert "method" in err["message"] and "POST" in err["message"]
    err = assert_error(preflight(s, "/v1/models", A, "POST"), 400, "cors_forbidden")
    r = preflight(s, "/predict", A, headers="content-type, x-evil")
    err = assert_error(r, 400, "cors_forbidden")
    assert "x-evil" in err["message"]
    assert "Access-Control-Allow-Methods" not in r.headers
    # Unknown paths are not found, preflight or not.
    assert_error(preflight(s, "/nowhere", A), 404, "not_found")



def test_preflight_needs_no_api_key(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    key = create_key(keys, "web")
    s = server_factory("--keys-file", str(keys), "--cors-allowed-origins", A)
    r = preflight(s, "/predict", A, headers="content-type, x-api-key")
    assert r.status_code == 204, r.text
    # The request itself still needs the key, and the page can read why.
    r = s.predict("a fine film", headers={"Origin": A})
    assert_error(r, 401, "missing_api_key")
    assert r.headers["Access-Control-Allow-Origin"] == A
    r = s.predict("a fine film", headers={"Origin": A, "X-API-Key": key})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == A
    assert key not in "\n".join(s.raw_lines())


def test_any_origin(server_factory):
    s = server_factory("--cors-allowed-origins", "*")
    for headers in ({"Origin": "https://anything.example"}, {"Origin": "null"}, {}):
        r = s.predict("a fine film", headers=headers)
        assert r.status_code == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "X-Request-ID" in r.headers["Access-Control-Expose-Headers"]
        assert "Vary" not in r.headers                  # the same answer for every origin
    r = preflight(s, "/predict", "https://anything.example", headers="content-type")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Max-Age"] == "600"   # default 10m


def run_serve(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env["AISERVE_KEYS_FILE"] = "/nonexistent/aiserve-tests/keys.json"
    return subprocess.run([BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--model-repository", MODELS,
                           *args], capture_output=True, timeout=60, env=env)


@pytest.mark.parametrize("value,fragment", [
    ("https://app.example.com/", "'https://app.example.com/' is not an origin"),
    ("app.example.com", "'app.example.com' is not an origin"),
    ("null", "'null' is not an origin"),
    ("https://a.example,,https://b.example", "empty item"),
])
def test_bad_origins_refused_at_start(value, fragment):
    p = run_serve("--cors-allowed-origins", value)
    assert p.returncode == 2
    err = p.stderr.decode()
    assert "cors-allowed-origins" in err and fragment in err, err


def test_star_with_origins_refused():
    p = run_serve("--cors-allowed-origins", "*,%s" % A)
    assert p.returncode == 2
    failed = [json.loads(l) for l in p.stdout.decode().splitlines() if '"startup_failed"' in l]
    assert failed and "cors.allowed_origins" in failed[0]["error"] and "*" in failed[0]["error"], p.stdout
