"""test_ratelimit.py - rate limiting with the real binary: exactly the limit
admitted under 50 concurrent clients on one key, keys limited independently,
the X-RateLimit-* headers on 200 and 429 (with Retry-After and the error
shape), refill, tiers from a YAML file, clients without a key limited by
address, X-Forwarded-For believed only from trusted proxies, endpoints that
are not limited, and the metrics.

The harness starts servers without rate limits (AISERVE_RATE_LIMIT=false);
every test here turns them on with --rate-limit.
"""

import concurrent.futures
import os
import subprocess
import threading
import time

import requests

from harness import BIN, assert_error, sample, wait_until

TEXT = {"text": "a fine film"}


def create_key(path, name, tier):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "keys", "create", "--keys-file", str(path), "--name", name, "--scopes", "predict",
                        "--tier", tier], capture_output=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode().strip()


def concurrent_predictions(servers, key, n):
    """n clients released at once, client i on servers[i % len(servers)], each
    POSTing one distinct text with the key. Returns (responses, seconds)."""
    barrier = threading.Barrier(n)

    def one(i):
        s = servers[i % len(servers)]
        barrier.wait(30)
        return requests.post(s.url("/predict"), json={"text": "client %d" % i},
                             headers={"X-API-Key": key}, timeout=60)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    return results, time.monotonic() - t0


def assert_exact_limit(results, elapsed, burst):
    """Checks the answers of concurrent_predictions on a tier of `burst` a
    minute with burst `burst`: exactly the burst admitted, plus what refilled
    while the test ran; each admitted request saw its own remaining count
    (no two read the same token); every other one is a proper 429. Returns
    (admitted, limited)."""
    ok = [r for r in results if r.status_code == 200]
    limited = [r for r in results if r.status_code == 429]
    assert len(ok) + len(limited) == len(results), [r.status_code for r in results]
    refill_s = 60 / burst
    assert len(ok) == burst + int(elapsed // refill_s), (len(ok), elapsed)
    if elapsed < refill_s:
        assert sorted(limit_headers(r)[1] for r in ok) == list(range(burst))
    for r in limited:
        err = assert_error(r, 429, "rate_limited")
        assert err["type"] == "rate_limit_error"
        assert int(r.headers["Retry-After"]) >= 1
        assert limit_headers(r)[:2] == (burst, 0)
    return ok, limited


def limit_headers(r):
    h = r.headers
    return int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"])


def test_limit_exact_under_50_concurrent_clients(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    key = create_key(keys, "busy", "tight")
    # 10 a minute, burst 10: one more token only every 6 s.
    s = server_factory("--rate-limit", "--rate-limit-tiers", "tight=10/10", "--keys-file", str(keys))
    n = 50
    results, elapsed = concurrent_predictions([s], key, n)
    ok, limited = assert_exact_limit(results, elapsed, 10)
    for r in limited:
        err = assert_error(r, 429, "rate_limited")
        assert "busy" in err["message"] and key not in err["message"]
    m = s.metrics()
    assert sample(m, "aiserve_ratelimit_decisions_total", result="allowed") == len(ok)
    assert sample(m, "aiserve_ratelimit_decisions_total", result="limited") == len(limited)
    assert sample(m, "prediction_requests_total", endpoint="/predict", status="429") == len(limited)
    assert sample(m, "aiserve_ratelimit_buckets") == 1


def test_two_keys_limited_independently(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    a = create_key(keys, "alpha", "tight")
    b = create_key(keys, "beta", "tight")
    gold = create_key(keys, "gamma", "gold")     # a tier nobody configured: "default"
    s = server_factory("--rate-limit", "--rate-limit-tiers", "tight=3/3", "--keys-file", str(keys))
    for _ in range(3):
        assert s.predict("x", headers={"X-API-Key": a}).status_code == 200
    assert_error(s.predict("x", headers={"X-API-Key": a}), 429, "rate_limited")
    # beta has its own bucket, and Bearer is the same key as X-API-Key
    for i in range(3):
        r = s.predict("x", headers={"Authorization": "Bearer " + b})
        assert r.status_code == 200
        assert limit_headers(r)[:2] == (3, 2 - i)
    assert_error(s.predict("x", headers={"X-API-Key": b}), 429, "rate_limited")
    assert_error(s.predict("x", headers={"X-API-Key": a}), 429, "rate_limited")
    r = s.predict("x", headers={"X-API-Key": gold})
    assert r.status_code == 200
    assert limit_headers(r)[:2] == (100, 99)
    # a refused key is refused before the limiter: it takes no token
    r = s.predict("x", headers={"X-API-Key": "ais_" + "A" * 43})
    assert_error(r, 403, "invalid_api_key")
    assert "X-RateLimit-Limit" not in r.headers
    assert sample(s.metrics(), "aiserve_ratelimit_buckets") == 3


def test_headers_refill_and_other_endpoints(server_factory):
    # 600 a minute (one every 100 ms), burst 2; no key: the client address
    s = server_factory("--rate-limit", "--rate-limit-tiers", "anonymous=600/2")
    r = s.predict("hello")
    assert r.status_code == 200
    limit, remaining, reset = limit_headers(r)
    assert (limit, remaining) == (2, 1) and reset == 1     # 0.1 s to full, rounded up
    r = s.post("/v1/models/sentiment/predict", json=TEXT)  # both model endpoints share the bucket
    assert r.status_code == 200 and limit_headers(r)[1] == 0
    r = s.predict("hello")
    err = assert_error(r, 429, "rate_limited")
    assert err["request_id"] == r.headers["X-Request-ID"]
    assert r.headers["Retry-After"] == "1"
    assert limit_headers(r) == (2, 0, 1)
    assert r.headers["Content-Type"].startswith("application/json")

    def admitted():
        r = s.predict("hello")
        assert r.status_code in (200, 429), (r.status_code, r.text)
        return r if r.status_code == 200 else None

    r = wait_until(admitted, 10, "a token to come back (one every 100 ms)")   # refill
    assert limit_headers(r)[0] == 2
    # errors after the limiter carry the headers too, and count
    r = s.post("/predict", json={"text": 5})
    assert r.status_code in (422, 429)
    assert "X-RateLimit-Remaining" in r.headers
    # endpoints that are not limited: never a header, never a 429
    for _ in range(5):
        for path in ("/health", "/health/ready", "/v1/models", "/metrics"):
            r = s.get(path)
            assert r.status_code == 200, path
            assert "X-RateLimit-Limit" not in r.headers
    assert s.alive()


def test_tiers_from_yaml(server_factory, tmp_path):
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text("ratelimit:\n"
                   "  enabled: true\n"
                   "  tiers:\n"
                   "    anonymous: {requests_per_minute: 60, burst: 4}\n"
                   "    pro: {requests_per_minute: 1000, burst: 200}\n")
    # "" counts as unset: the harness's AISERVE_RATE_LIMIT=false must not
    # override the file
    s = server_factory("--config", str(cfg), env={"AISERVE_RATE_LIMIT": ""})
    started = [e for e in s.logs("starting")][0]["config"]
    assert started["ratelimit_tiers"]["pro"] == {"requests_per_minute": 1000, "burst": 200}
    assert started["ratelimit_tiers"]["default"] == {"requests_per_minute": 100, "burst": 100}
    statuses = [s.predict("t").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


def test_forwarded_for_ignored_from_untrusted_peers(server_factory):
    s = server_factory("--rate-limit", "--rate-limit-tiers", "anonymous=3/3")
    # 127.0.0.1 is no trusted proxy: a new X-Forwarded-For each time does not
    # make a new client
    statuses = [s.predict("t", headers={"X-Forwarded-For": "203.0.113.%d" % i}).status_code
                for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert sample(s.metrics(), "aiserve_ratelimit_buckets") == 1


def test_forwarded_for_believed_from_trusted_proxies(server_factory):
    s = server_factory("--rate-limit", "--rate-limit-tiers", "anonymous=3/3", "--trusted-proxies", "127.0.0.1")
    # each forwarded client has its own bucket
    for i in range(5):
        r = s.predict("t", headers={"X-Forwarded-For": "203.0.113.%d" % i})
        assert r.status_code == 200 and limit_headers(r)[1] == 2
    # the rightmost untrusted address is the client: what a client writes on
    # the left of the list does not buy it a fresh bucket
    statuses = [s.predict("t", headers={"X-Forwarded-For": "198.51.100.%d, 192.0.2.7" % i}).status_code
                for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    # without the header the proxy itself is the client
    assert s.predict("t").status_code == 200
    assert sample(s.metrics(), "aiserve_ratelimit_buckets") == 7


def test_disabled(server_factory):
    s = server_factory("--no-rate-limit", "--rate-limit-tiers", "anonymous=1/1")
    for _ in range(5):
        r = s.predict("t")
        assert r.status_code == 200
        assert "X-RateLimit-Limit" not in r.headers


def test_bad_tiers_refuse_to_start(tmp_path):
    for bad in ("anonymous=0/1", "pro", "a b=1/1", "pro=1/2,pro=3/4"):
        p = subprocess.run([BIN, "serve", "--port", "0", "--rate-limit-tiers", bad], capture_output=True,
                           timeout=30, env={k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")})
        assert p.returncode == 2, (bad, p.stdout, p.stderr)
        assert b"ratelimit.tiers" in p.stderr or b"rate-limit-tiers" in p.stderr, p.stderr
    p = subprocess.run([BIN, "serve", "--port", "0", "--trusted-proxies", "proxy.example"], capture_output=True,
                       timeout=30)
    assert p.returncode == 2 and b"proxy.example" in p.stderr, p.stderr
