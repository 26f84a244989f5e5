"""test_redis.py - rate limits and the response cache in a real redis-server
(started here on a free loopback port): two aiserve instances sharing both,
the limit exact under 50 concurrent clients spread over both, Redis killed
mid-run and restarted (every request answered throughout, /health degraded
and back, caching resumed), the deny policy, passwords (never logged),
errors and stalls from Redis itself, key prefixes, and bad URLs.
"""

import os
import subprocess
import threading

import pytest
import requests

from harness import BIN, assert_error, free_port, sample, wait_until

from test_ratelimit import assert_exact_limit, concurrent_predictions, create_key, limit_headers


def serve(server_factory, redis_url, *args, **kw):
    return server_factory("--redis-url", redis_url, *args, **kw)


def wait_health(s, status, timeout=30):
    """The /health body once its status is status."""
    last = [None]

    def reached():
        last[0] = s.get("/health").json()
        return last[0] if last[0]["status"] == status else None

    return wait_until(reached, timeout, lambda: "health %r (last: %r)" % (status, last[0]))


def test_cache_lives_in_redis_and_is_shared(server_factory, redis_factory):
    redis = redis_factory()
    a = serve(server_factory, redis.url(db=3))
    b = serve(server_factory, redis.url(db=3))
    r = a.predict("a film worth seeing twice")
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    # the other instance answers from Redis, with the same body
    r2 = b.predict("a film worth seeing twice")
    assert r2.status_code == 200 and r2.headers["X-Cache"] == "HIT"
    assert r2.content == r.content
    keys = redis.command("KEYS", "*", db=3)
    cache_keys = [k for k in keys if k.startswith(b"aiserve:c:")]
    assert len(cache_keys) == 1
    assert redis.command("GET", cache_keys[0], db=3) == r.content
    ttl = redis.command("PTTL", cache_keys[0], db=3)
    assert 3_500_000 <= ttl <= 3_600_000          # cache.ttl (1 h by default)
    # no-cache still computes, and refreshes the entry
    r3 = b.predict("a film worth seeing twice", headers={"Cache-Control": "no-cache"})
    assert r3.headers["X-Cache"] == "MISS"
    assert sample(b.metrics(), "aiserve_cache_requests_total", result="hit") == 1
    assert sample(a.metrics(), "aiserve_redis_connections") >= 1
    # both users of Redis: the cache and limits, and the batch queue (batch.store auto)
    assert a.get("/health").json()["dependencies"] == {"redis": {"status": "up"}, "batch_queue": {"status": "up"}}


def test_limit_exact_across_two_instances_under_50_clients(server_factory, redis_factory, tmp_path):
    redis = redis_factory()
    keys = tmp_path / "keys.json"
    key = create_key(keys, "shared", "tight")
    other = create_key(keys, "other", "tight")
    args = ("--rate-limit", "--rate-limit-tiers", "tight=10/10", "--keys-file", str(keys))
    a = serve(server_factory, redis.url(), *args)
    b = serve(server_factory, redis.url(), *args)
    n = 50
    results, elapsed = concurrent_predictions([b, a], key, n)
    ok, _ = assert_exact_limit(results, elapsed, 10)  # one bucket for both instances
    allowed = sum(sample(s.metrics(), "aiserve_ratelimit_decisions_total", result="allowed") for s in (a, b))
    assert allowed == len(ok)
    # another key has its own bucket, on either instance
    r = a.predict("x", headers={"X-API-Key": other})
    assert r.status_code == 200 and limit_headers(r)[:2] == (10, 9)
    assert b.predict("x", headers={"X-API-Key": other}).headers["X-RateLimit-Remaining"] == "8"
    bucket = redis.command("HGETALL", "aiserve:rl:k:other")
    assert bucket[0::2] == [b"l", b"t"]
    assert 0 < redis.command("PTTL", "aiserve:rl:k:other") <= 2 * 6_000 + 1_000


def test_redis_killed_and_restarted_mid_run(server_factory, redis_factory):
    redis = redis_factory()
    s = serve(server_factory, redis.url(), "--rate-limit", "--rate-limit-tiers", "anonymous=100000/100000")
    assert s.predict("before the outage").headers["X-Cache"] == "MISS"
    assert s.predict("before the outage").headers["X-Cache"] == "HIT"
    stop = threading.Event()
    statuses = []

    def client():
        i = 0
        while not stop.is_set():
            r = requests.post(s.url("/predict"), json={"text": "steady traffic %d" % (i % 7)}, timeout=30)
            statuses.append(r.status_code)
            i += 1

    def answered(more):
        """Returns once the clients have had `more` answers since the call."""
        n = len(statuses)
        wait_until(lambda: len(statuses) >= n + more, 30, "%d more answers to the clients" % more)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        answered(20)                                     # traffic flows through Redis
        redis.kill()
        body = wait_health(s, "degraded")
        dep = body["dependencies"]["redis"]
        assert dep["status"] == "down" and "127.0.0.1:%d" % redis.port in dep["error"]
        assert body["ready"] is True
        # while Redis is gone: answers keep coming, never from the cache
        r = s.predict("during the outage")
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
        assert s.predict("during the outage").headers["X-Cache"] == "MISS"
        answered(20)                                     # traffic flows without Redis
        redis.restart()
        wait_health(s, "healthy")
        answered(20)                                     # and through Redis again
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    # caching resumed (Redis came back empty: one miss, then hits)
    assert s.predict("after the outage").headers["X-Cache"] == "MISS"
    assert s.predict("after the outage").headers["X-Cache"] == "HIT"
    m = s.metrics()
    assert sample(m, "aiserve_redis_errors_total", kind="connect") >= 1
    assert sample(m, "aiserve_ratelimit_decisions_total", result="failed_open") >= 1
    assert s.logs("redis_unavailable") and s.logs("redis_available")


def test_deny_policy_while_redis_is_down(server_factory):
    dead = "redis://127.0.0.1:%d" % free_port()         # nothing listens there
    s = serve(server_factory, dead, "--rate-limit", "--rate-limit-on-backend-failure", "deny")
    body = wait_health(s, "degraded")
    assert "Connection refused" in body["dependencies"]["redis"]["error"]
    r = s.predict("anything")
    err = assert_error(r, 503, "rate_limiter_unavailable")
    assert err["type"] == "service_unavailable_error"
    assert r.headers["Retry-After"] == "1"
    assert sample(s.metrics(), "aiserve_ratelimit_decisions_total", result="failed_closed") == 1
    # health and metrics are never limited
    assert s.get("/health/ready").status_code == 200
    # the default policy admits
    s2 = serve(server_factory, dead, "--rate-limit")
    r = s2.predict("anything")
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"


def test_password_used_and_never_logged(server_factory, redis_factory):
    secret = "s3cret-pass:with@odd"
    redis = redis_factory(password=secret)
    quoted = requests.utils.quote(secret, safe="")
    url = "redis://:%s@127.0.0.1:%d" % (quoted, redis.port)
    s = serve(server_factory, url)
    assert s.predict("password works").headers["X-Cache"] == "MISS"
    assert s.predict("password works").headers["X-Cache"] == "HIT"
    bad = serve(server_factory, "redis://:wrong@127.0.0.1:%d" % redis.port)
    body = wait_health(bad, "degraded")
    assert "handshake refused" in body["dependencies"]["redis"]["error"]
    assert bad.predict("still answered").status_code == 200
    for srv in (s, bad):
        out = srv.output()
        assert secret not in out and quoted not in out and ":wrong@" not in out
        started = srv.logs("starting")[0]["config"]["redis_url"]
        assert started.startswith("redis://:***@127.0.0.1:")


def test_errors_from_redis_fail_open(server_factory, redis_factory):
    redis = redis_factory()
    s = serve(server_factory, redis.url(), "--rate-limit", "--rate-limit-tiers", "anonymous=60/5")
    assert s.predict("warm").status_code == 200
    # a bucket key holding the wrong type: the script fails, the request is admitted
    redis.command("DEL", "aiserve:rl:a:127.0.0.1")
    redis.command("SET", "aiserve:rl:a:127.0.0.1", "garbage")
    r = s.predict("wrong type")
    assert r.status_code == 200 and "X-RateLimit-Remaining" in r.headers
    assert sample(s.metrics(), "aiserve_redis_errors_total", kind="reply") >= 1
    assert sample(s.metrics(), "aiserve_ratelimit_decisions_total", result="failed_open") == 1
    redis.command("DEL", "aiserve:rl:a:127.0.0.1")
    # the script flushed away (SCRIPT FLUSH, a failover): the step is sent
    # again with the script's text (EVAL), which caches it anew, so limiting
    # goes on exactly and nothing fails open
    redis.command("SCRIPT", "FLUSH")
    r = s.predict("noscript")
    assert r.status_code == 200 and int(r.headers["X-RateLimit-Remaining"]) == 4
    assert sample(s.metrics(), "aiserve_ratelimit_decisions_total", result="failed_open") == 1
    remaining = [int(s.predict("counted %d" % i).headers["X-RateLimit-Remaining"]) for i in range(4)]
    assert remaining[0] == 3 and remaining[-1] <= 1
    assert "number_of_cached_scripts:1" in redis.command("INFO", "memory").decode()


def test_stalled_and_full_redis(server_factory, redis_factory):
    redis = redis_factory()
    s = serve(server_factory, redis.url(), "--redis-command-timeout", "300ms")
    assert s.predict("before the stall").headers["X-Cache"] == "MISS"
    # Redis stops answering for 2 s: the lookup's command times out (300 ms),
    # which drops the connection and fails the lookup (counted), and the
    # answer is computed without the cache; then Redis is used again.
    redis.command("CLIENT", "PAUSE", "2000")
    r = s.predict("during the stall")
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    assert sample(s.metrics(), "aiserve_redis_errors_total", kind="timeout") >= 1
    wait_health(s, "healthy")
    assert s.predict("after the stall").headers["X-Cache"] == "MISS"
    assert s.predict("after the stall").headers["X-Cache"] == "HIT"
    assert s.predict("before the stall").headers["X-Cache"] == "HIT"
    # Redis refusing writes (out of memory): answers are not cached, nothing else changes
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis.command("CONFIG", "SET", "maxmemory", "1")
    try:
        assert s.predict("no room").headers["X-Cache"] == "MISS"
        assert s.predict("no room").headers["X-Cache"] == "MISS"
        assert s.predict("after the stall").headers["X-Cache"] == "HIT"   # reads still work
    finally:
        redis.command("CONFIG", "SET", "maxmemory", "0")
    assert sample(s.metrics(), "aiserve_redis_errors_total", kind="reply") >= 2


def test_key_prefix_separates_deployments(server_factory, redis_factory):
    redis = redis_factory()
    a = serve(server_factory, redis.url(), "--redis-key-prefix", "blue:")
    b = serve(server_factory, redis.url(), "--redis-key-prefix", "green:")
    assert a.predict("same words").headers["X-Cache"] == "MISS"
    assert b.predict("same words").headers["X-Cache"] == "MISS"
    assert b.predict("same words").headers["X-Cache"] == "HIT"
    keys = sorted(k.split(b":c:")[0] for k in redis.command("KEYS", "*"))
    assert keys == [b"blue", b"green"]


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:6379", "must start with redis://"),
    ("rediss://127.0.0.1:6379", "TLS"),
    ("redis://127.0.0.1:99999", "port"),
    ("redis://127.0.0.1:6379/abc", "database"),
    ("redis://:p%zz@127.0.0.1", "escape"),
    ("unix://relative.sock", "absolute"),
])
def test_bad_url_stops_the_start(url, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env["AISERVE_REDIS_URL"] = url
    p = subprocess.run([BIN, "serve", "--port", "0", "--keys-file", "/nonexistent/keys.json"],
                       capture_output=True, timeout=30, env=env)
    assert p.returncode == 2
    out = (p.stdout + p.stderr).decode()
    assert "redis.url" in out and words in out, out
