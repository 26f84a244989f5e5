"""test_auth.py - API keys with the real binary: `aiserve keys` (create, list,
revoke, the file it writes, its errors), 401 / 403 and scopes on every
protected route, X-API-Key and Authorization: Bearer, the open endpoints,
revocation taking effect without a restart (SIGHUP, and the file changing),
a corrupt key store (kept keys on reload, refused start), open mode without
keys, the failure metrics, and the key never appearing in a log line, a
metric or an error body.
"""

import hashlib
import json
import os
import re
import signal
import stat
import subprocess

import pytest

from harness import BIN, MODELS, Server, assert_error, sample, wait_until

KEY_RE = re.compile(r"^ais_[A-Za-z0-9_-]{43}$")
RELOAD_WAIT = 10.0  # generous: the file is checked about once a second


def keys_cmd(*args, env=None):
    """Runs `aiserve keys ARGS` with a clean AISERVE_* environment."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    e.update(env or {})
    p = subprocess.run([BIN, "keys", *map(str, args)], capture_output=True, timeout=30, env=e)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def create(path, name, scopes, *extra):
    rc, out, err = keys_cmd("create", "--keys-file", path, "--name", name, "--scopes", scopes, *extra)
    assert rc == 0, err
    key = out.strip()
    assert KEY_RE.match(key), out
    return key


def revoke(path, name):
    rc, _, err = keys_cmd("revoke", "--keys-file", path, name)
    assert rc == 0, err


def auth(key):
    return {"X-API-Key": key}


def bearer(key):
    return {"Authorization": "Bearer " + key}


def wait_status(s, key, status, timeout=RELOAD_WAIT):
    """The first answer of /predict with key that has this status."""
    def answered():
        r = s.predict("a fine film", headers=auth(key))
        return r if r.status_code == status else None

    return wait_until(answered, timeout, "/predict with the key to answer %d" % status)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    path = d / "keys.json"
    return {
        "path": path,
        "web": create(path, "web", "predict"),
        "emb": create(path, "emb", "embed,batch"),
        "all": create(path, "all", "predict,embed,batch,chat,admin", "--tier", "gold"),
    }


@pytest.fixture(scope="module")
def server(store):
    s = Server("--keys-file", str(store["path"])).start()
    yield s
    rc = s.stop()
    assert rc == 0, "server exited %r on SIGTERM:\n%s" % (rc, s.output())


# -- aiserve keys ------------------------------------------------------------------

def test_keys_cli_create_list_revoke(tmp_path):
    path = tmp_path / "sub" / "keys.json"        # the directory is created
    rc, out, err = keys_cmd("create", "--keys-file", path, "--name", "web", "--scopes", "predict,embed")
    assert rc == 0, err
    key = out.strip()
    assert out == key + "\n"                    # the key alone on stdout
    assert KEY_RE.match(key)
    assert "only this once" in err and key not in err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key[4:] not in text
    doc = json.loads(text)
    rec = doc["keys"][0]
    assert rec["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert rec["name"] == "web" and rec["scopes"] == ["predict", "embed"] and rec["tier"] == "default"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", rec["created"]) and rec["revoked"] is False

    key2 = create(path, "batcher", "batch", "--tier", "bulk")
    assert key2 != key

    rc, out, err = keys_cmd("list", "--keys-file", path)
    assert rc == 0, err
    lines = [json.loads(l) for l in out.splitlines()]
    assert [l["name"] for l in lines] == ["web", "batcher"]
    for l in lines:
        assert set(l) == {"name", "scopes", "tier", "created", "revoked"}
    assert lines[1]["tier"] == "bulk" and lines[1]["scopes"] == ["batch"]
    assert key not in out and key2 not in out and rec["sha256"] not in out

    rc, _, err = keys_cmd("revoke", "--keys-file", path, "web")
    assert rc == 0, err
    rc, out, _ = keys_cmd("list", "--keys-file", path)
    web = json.loads(out.splitlines()[0])
    assert web["revoked"] is True and web["revoked_at"].endswith("Z")
    rc, _, err = keys_cmd("revoke", "--keys-file", path, "web")
    assert rc == 0 and "already" in err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keys_cli_errors(tmp_path):
    path = tmp_path / "keys.json"
    create(path, "web", "predict")
    before = path.read_bytes()
    cases = [
        (("create", "--name", "web", "--scopes", "predict"), "exists"),
        (("create", "--name", "x", "--scopes", "predict,read"), "unknown scope 'read'"),
        (("create", "--name", "x", "--scopes", ""), "scope"),
        (("create", "--name", "bad name", "--scopes", "predict"), "not valid"),
        (("create", "--name", "x", "--scopes", "predict", "--tier", "a/b"), "tier"),
        (("create", "--name", "x"), "--scopes"),
        (("revoke", "nobody"), "no key named 'nobody'"),
        (("revoke",), "one key name"),
        (("list", "extra"), "unexpected argument"),
        (("rotate",), "unknown command"),
        (("list", "--bogus"), "unknown option"),
    ]
    for args, message in cases:
        rc, out, err = keys_cmd(*args, "--keys-file", path)
        assert rc == 2, (args, rc, err)
        assert message in err, (args, err)
        assert out == ""
    assert path.read_bytes() == before

    path.write_text('{"keys": [')                # corrupt: never rewritten
    for args in (("create", "--name", "x", "--scopes", "predict"), ("revoke", "web"), ("list",)):
        rc, out, err = keys_cmd(*args, "--keys-file", path)
        assert rc == 2 and "not valid JSON" in err and str(path) in err, (args, err)
    assert path.read_text() == '{"keys": ['

    rc, out, err = keys_cmd("list", "--keys-file", tmp_path / "none.json")
    assert rc == 0 and out == "" and "no keys" in err


def test_keys_cli_finds_the_store_like_the_server(tmp_path):
    env_path = tmp_path / "env.json"
    create_rc = keys_cmd("create", "--name", "e", "--scopes", "predict", env={"AISERVE_KEYS_FILE": str(env_path)})
    assert create_rc[0] == 0, create_rc[2]
    assert env_path.exists()
    cfg = tmp_path / "aiserve.yaml"
    yaml_path = tmp_path / "yaml.json"
    cfg.write_text("auth:\n  keys_file: %s\n" % yaml_path)
    rc, _, err = keys_cmd("create", "--config", cfg, "--name", "y", "--scopes", "chat")
    assert rc == 0, err
    assert json.loads(yaml_path.read_text())["keys"][0]["name"] == "y"
    rc, out, _ = keys_cmd("list", env={"AISERVE_KEYS_FILE": str(env_path)})
    assert json.loads(out)["name"] == "e"


# -- the server --------------------------------------------------------------------

PROTECTED = [
    ("POST", "/predict"),
    ("POST", "/v1/models/sentiment/predict"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/sentiment"),
]


def call(s, method, path, headers=None):
    if method == "POST":
        return s.post(path, json={"text": "a fine film"}, headers=headers or {})
    return s.get(path, headers=headers or {})


def test_missing_key_is_401(server):
    for method, path in PROTECTED:
        for headers in ({}, {"X-API-Key": ""}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}):
            r = call(server, method, path, headers)
            err = assert_error(r, 401, "missing_api_key")
            assert err["type"] == "authentication_error"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_invalid_key_is_403(server, store):
    bad = ["ais_" + "A" * 43, store["web"][:-1], store["web"] + "x", store["web"].upper(), "x" * 4000]
    for method, path in PROTECTED:
        for key in bad:
            for headers in (auth(key), bearer(key)):
                r = call(server, method, path, headers)
                err = assert_error(r, 403, "invalid_api_key")
                assert err["type"] == "permission_error"
                assert key not in r.text


def test_good_key_as_x_api_key_or_bearer(server, store):
    key = store["web"]
    for headers in (auth(key), bearer(key), {"authorization": "bearer  " + key}, {"x-api-key": key},
                    {"X-API-Key": key, "Authorization": "Bearer " + key}):
        r = server.predict("a gripping, beautifully made film", headers=headers)
        assert r.status_code == 200, (headers, r.text)
        assert r.json()["label"] in ("POSITIVE", "NEGATIVE")
    r = server.post("/v1/models/sentiment/predict", json={"texts": ["good", "bad"]}, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert server.get("/v1/models", headers=auth(key)).status_code == 200
    # Two different keys in one request are refused, whichever is good.
    r = server.predict("x", headers={"X-API-Key": key, "Authorization": "Bearer " + store["all"]})
    assert_error(r, 403, "invalid_api_key")


def test_scopes(server, store):
    emb = store["emb"]                           # embed, batch: no predict
    for path in ("/predict", "/v1/models/sentiment/predict"):
        r = server.post(path, json={"text": "a fine film"}, headers=auth(emb))
        err = assert_error(r, 403, "insufficient_scope")
        assert err["type"] == "permission_error"
        assert "'predict'" in err["message"] and "'emb'" in err["message"]
        assert 'scope="predict"' in r.headers["WWW-Authenticate"]
    for path in ("/v1/models", "/v1/models/sentiment"):  # any valid key
        assert server.get(path, headers=auth(emb)).status_code == 200
    assert server.predict("fine", headers=auth(store["all"])).status_code == 200
    # The auth check comes before method and body checks: nothing leaks to
    # a caller without a key, and a good key still gets the usual errors.
    assert_error(server.get("/predict"), 401, "missing_api_key")
    assert_error(server.get("/predict", headers=auth(store["web"])), 405, "method_not_allowed")
    assert_error(server.post("/predict", data=b"{", headers=auth(store["web"])), 400, "invalid_json")
    assert_error(server.get("/v1/models/nope", headers=auth(emb)), 404, "model_not_found")


def test_open_endpoints(server):
    for path in ("/health", "/health/live", "/health/ready", "/metrics"):
        assert server.get(path).status_code == 200, path
    assert_error(server.get("/nope"), 404, "not_found")


def test_failures_counted_by_reason(server_factory, tmp_path):
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    emb = create(path, "emb", "embed")
    old = create(path, "old", "predict")
    revoke(path, "old")
    s = server_factory("--keys-file", str(path))
    s.predict("x")
    s.predict("x")
    s.predict("x", headers=auth("ais_nope"))
    s.predict("x", headers=auth(old))
    s.predict("x", headers=auth(emb))
    s.predict("x", headers=auth(emb))
    s.predict("x", headers=auth(emb))
    assert s.predict("x", headers=auth(web)).status_code == 200
    r = s.get("/metrics")
    m = s.metrics()
    assert sample(m, "aiserve_auth_failures_total", reason="missing") == 2
    assert sample(m, "aiserve_auth_failures_total", reason="invalid") == 1
    assert sample(m, "aiserve_auth_failures_total", reason="revoked") == 1
    assert sample(m, "aiserve_auth_failures_total", reason="scope") == 3
    assert sample(m, "aiserve_api_keys", state="active") == 2
    assert sample(m, "aiserve_api_keys", state="revoked") == 1
    assert sample(m, "prediction_requests_total", endpoint="/predict", status="401") == 2
    assert sample(m, "prediction_requests_total", endpoint="/predict", status="403") == 5
    for key in (web, emb, old):
        assert key not in r.text


def test_revoke_and_sighup_without_restart(server_factory, tmp_path):
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    other = create(path, "other", "predict")
    s = server_factory("--keys-file", str(path))
    s.wait_log("keys_loaded", keys=2)
    assert s.predict("fine", headers=auth(web)).status_code == 200
    revoke(path, "web")
    s.send_signal(signal.SIGHUP)
    s.wait_log("keys_reloaded", timeout=RELOAD_WAIT, trigger="sighup")
    r = s.predict("fine", headers=auth(web))
    err = assert_error(r, 403, "invalid_api_key")
    assert "revoked" in err["message"]
    assert s.predict("fine", headers=bearer(other)).status_code == 200
    s.send_signal(signal.SIGHUP)                # again, the file unchanged: harmless, still serving
    again = s.wait_log("keys_reloaded", timeout=RELOAD_WAIT, nth=2, trigger="sighup")
    assert (again["keys"], again["active"]) == (2, 1), again
    assert_error(s.predict("fine", headers=auth(web)), 403, "invalid_api_key")
    assert s.predict("fine", headers=auth(other)).status_code == 200
    assert s.alive()


def test_revoke_picked_up_from_the_file(server_factory, tmp_path):
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    s = server_factory("--keys-file", str(path))
    assert s.predict("fine", headers=auth(web)).status_code == 200
    revoke(path, "web")                          # no signal
    r = wait_status(s, web, 403)
    assert_error(r, 403, "invalid_api_key")
    s.wait_log("keys_reloaded", trigger="file_changed")
    new = create(path, "new", "predict")
    assert wait_status(s, new, 200).status_code == 200


def test_corrupt_file_on_reload_keeps_the_keys(server_factory, tmp_path):
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    good = path.read_text()
    s = server_factory("--keys-file", str(path))
    path.write_text('{"keys": [{"name": "web", ')
    s.send_signal(signal.SIGHUP)
    e = s.wait_log("keys_reload_failed", timeout=RELOAD_WAIT, trigger="sighup")
    assert e["level"] == "error" and str(path) in e["error"] and e["keys_in_use"] == 1
    assert s.predict("fine", headers=auth(web)).status_code == 200
    assert s.predict("fine").status_code == 401
    path.write_text("")                          # truncated mid-rewrite: never opens the server
    s.send_signal(signal.SIGHUP)
    e = s.wait_log("keys_reload_failed", timeout=RELOAD_WAIT, nth=2, trigger="sighup")
    assert e["keys_in_use"] == 1, e
    assert s.predict("fine").status_code == 401
    os.unlink(path)                              # gone: keys stay
    s.send_signal(signal.SIGHUP)
    e = s.wait_log("keys_reload_failed", timeout=RELOAD_WAIT, nth=3, trigger="sighup")
    assert e["keys_in_use"] == 1, e
    assert s.predict("fine").status_code == 401
    assert s.predict("fine", headers=auth(web)).status_code == 200
    path.write_text(good)
    revoke(path, "web")
    assert wait_status(s, web, 403).status_code == 403
    assert len(s.logs("keys_reload_failed")) >= 3
    m = s.metrics()
    assert sample(m, "aiserve_keys_reloads_total", result="error") >= 3


def test_keys_required_refuses_a_reload_to_no_keys(server_factory, tmp_path):
    """With auth.keys_required, emptying the store or revoking its last key
    is refused like a corrupt file: the keys in use stay, and the server
    never opens; a store with another key is taken."""
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    s = server_factory("--keys-file", str(path), "--keys-required")
    path.write_text('{"version": 1, "keys": []}')  # without keys_required this opens the server
    s.send_signal(signal.SIGHUP)
    e = s.wait_log("keys_reload_failed", timeout=RELOAD_WAIT, trigger="sighup")
    assert "keys are required" in e["error"] and "keeping the 1 keys in use" in e["error"], e
    assert e["keys_in_use"] == 1
    assert_error(s.predict("fine"), 401, "missing_api_key")
    assert s.predict("fine", headers=auth(web)).status_code == 200
    other = create(path, "other", "predict")
    wait_until(lambda: s.predict("fine", headers=auth(other)).status_code == 200 or None, RELOAD_WAIT,
               "the store with a key to be taken")
    assert s.predict("fine", headers=auth(web)).status_code == 403  # the emptied store dropped it
    assert not s.logs("auth_disabled")


def test_corrupt_file_at_start_refuses_to_start(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "web", "sha256": "abc", "scopes": ["predict"]}]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--model-repository", MODELS,
                        "--keys-file", str(path)], capture_output=True, timeout=60, env=env)
    assert p.returncode == 2
    lines = [json.loads(l) for l in p.stdout.decode().splitlines()]
    failed = [l for l in lines if l["msg"] == "startup_failed"]
    assert failed and "sha256" in failed[0]["error"] and str(path) in failed[0]["error"]
    assert not [l for l in lines if l["msg"] == "listening"]


def test_open_without_keys_then_keys_appear(server_factory, tmp_path):
    path = tmp_path / "keys.json"                # not there yet
    s = server_factory("--keys-file", str(path), "--host", "0.0.0.0")
    e = s.wait_log("auth_disabled")
    assert e["level"] == "warning"               # bound beyond loopback
    assert s.predict("fine").status_code == 200
    assert s.get("/v1/models").status_code == 200
    key = create(path, "web", "predict")         # the file appears: keys are required from now on
    wait_until(lambda: s.predict("fine").status_code == 401, RELOAD_WAIT, "the new key store to require a key")
    assert_error(s.predict("fine"), 401, "missing_api_key")
    assert s.predict("fine", headers=auth(key)).status_code == 200


def test_open_on_loopback_logs_info(server_factory, tmp_path):
    s = server_factory("--keys-file", str(tmp_path / "none.json"))
    assert s.wait_log("auth_disabled")["level"] == "info"
    assert s.predict("fine", headers=auth("ais_whatever")).status_code == 200


def test_key_never_logged(server_factory, tmp_path):
    path = tmp_path / "keys.json"
    web = create(path, "web", "predict")
    emb = create(path, "emb", "embed")
    old = create(path, "old", "predict")
    revoke(path, "old")
    s = server_factory("--keys-file", str(path), "--log-level", "debug")
    r = s.predict("fine", headers={**auth(web), "X-Request-ID": "auth-ok"})
    assert r.status_code == 200
    wrong = web[:-1] + ("Q" if web[-1] != "Q" else "R")
    for i, headers in enumerate([auth(emb), auth(old), bearer(wrong), {}, auth(web + " extra"),
                                 {"X-API-Key": web, "Authorization": "Bearer " + emb}]):
        r = s.predict("fine", headers={**headers, "X-Request-ID": "auth-%d" % i})
        assert r.status_code in (401, 403)
        for key in (web, emb, old):
            assert key not in r.text and key not in str(r.headers)
    s.get("/v1/models", headers=bearer(emb))
    s.send_signal(signal.SIGHUP)
    s.wait_log("keys_reloaded")
    metrics = s.get("/metrics").text
    assert s.stop() == 0                         # every line it wrote is read by now
    out = "\n".join(s.raw_lines()) + "".join(s._err)
    for key in (web, emb, old):
        assert key not in out and key not in metrics
        assert key[4:20] not in out
        assert hashlib.sha256(key.encode()).hexdigest() not in out
    lines = {e["request_id"]: e for e in s.logs("request")}
    assert lines["auth-ok"]["key"] == "web"
    assert lines["auth-0"]["key"] == "emb"       # lacking scope: the name is logged
    assert lines["auth-0"]["status"] == 403
    assert "key" not in lines["auth-3"]          # no key sent
    assert "key" not in lines["auth-2"]          # unknown key: nothing to name
