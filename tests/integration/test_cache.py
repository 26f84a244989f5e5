"""test_cache.py - the response cache with the real binary: a HIT after a MISS
with a byte-identical body, Cache-Control: no-cache (lookup bypassed, fresh
answer stored), answers of two models never shared, the time to live, 50
identical concurrent requests run as one inference (coalescing), errors
never cached and shared with coalesced followers, --no-cache, and the
metrics.

The cache is on by default; tests that count inferences elsewhere start
their servers with --no-cache.
"""

import concurrent.futures
import threading
import time

import pytest
import requests

from harness import SENTIMENT, assert_error, make_repo, sample, wait_until


def inferences(m, model="sentiment"):
    """(engine calls, texts run) so far for model version 1."""
    return (sample(m, "aiserve_batches_total", model=model, version="1"),
            sample(m, "aiserve_batch_size_sum", model=model, version="1"))


def test_hit_after_miss_identical_body(server_factory):
    s = server_factory()
    for payload in ({"text": "a gripping, beautifully made film"},
                    {"texts": ["great fun", "a dull mess", "great fun"]}):
        first = s.post("/predict", json=payload)
        assert first.status_code == 200, first.text
        assert first.headers["X-Cache"] == "MISS"
        before = inferences(s.metrics())
        second = s.post("/predict", json=payload)
        assert second.status_code == 200
        assert second.headers["X-Cache"] == "HIT"
        assert second.content == first.content                 # byte for byte
        assert second.headers["X-Request-ID"] != first.headers["X-Request-ID"]
        assert second.headers["Content-Type"] == first.headers["Content-Type"]
        assert inferences(s.metrics()) == before               # the model did not run
    # the named route is the same model and version: the same entry
    r = s.post("/v1/models/sentiment/predict", json={"text": "a gripping, beautifully made film"})
    assert r.headers["X-Cache"] == "HIT"
    # a single text and a list of that one text are different answers
    r = s.post("/predict", json={"texts": ["a gripping, beautifully made film"]})
    assert r.headers["X-Cache"] == "MISS" and "predictions" in r.json()
    m = s.metrics()
    assert sample(m, "aiserve_cache_requests_total", result="hit") == 3
    assert sample(m, "aiserve_cache_requests_total", result="miss") == 3
    assert sample(m, "aiserve_cache_entries") == 3
    assert sample(m, "aiserve_cache_bytes") > 0


def test_no_cache_bypasses_lookup_and_stores(server_factory):
    s = server_factory()
    fresh = {"Cache-Control": "no-cache"}
    r1 = s.predict("worth every minute", headers=fresh)
    assert r1.headers["X-Cache"] == "MISS"
    r2 = s.predict("worth every minute")                       # stored by the bypass
    assert r2.headers["X-Cache"] == "HIT" and r2.content == r1.content
    before = inferences(s.metrics())
    for h in ({"Cache-Control": "max-age=0, No-Cache"}, {"Pragma": "no-cache"}):
        r = s.predict("worth every minute", headers=h)
        assert r.headers["X-Cache"] == "MISS" and r.content == r1.content
    after = inferences(s.metrics())
    assert after[1] - before[1] == 2                           # both ran the model
    m = s.metrics()
    assert sample(m, "aiserve_cache_requests_total", result="bypass") == 3
    assert sample(m, "aiserve_cache_requests_total", result="hit") == 1
    assert sample(m, "aiserve_cache_requests_total", result="miss") == 0


def test_models_never_share_entries(server_factory, tmp_path):
    # Two names for the same weights: the same texts, two keys (the unit
    # tests show the version is in the key the same way).
    repo = make_repo(tmp_path, sentiment=SENTIMENT, copy=SENTIMENT)
    s = server_factory(repo=repo)
    a = s.post("/v1/models/sentiment/predict", json={"text": "same words"})
    assert a.headers["X-Cache"] == "MISS"
    b = s.post("/v1/models/copy/predict", json={"text": "same words"})
    assert b.headers["X-Cache"] == "MISS"
    assert b.json()["model"] == "copy" and a.json()["model"] == "sentiment"
    assert b.json()["confidence"] == a.json()["confidence"]
    assert s.post("/v1/models/copy/predict", json={"text": "same words"}).headers["X-Cache"] == "HIT"
    assert sample(s.metrics(), "aiserve_cache_entries") == 2


def test_time_to_live(server_factory):
    s = server_factory("--cache-ttl", "1s")
    stored_before = time.monotonic()         # the entry is stored after this instant
    assert s.predict("short lived").headers["X-Cache"] == "MISS"
    assert s.predict("short lived").headers["X-Cache"] == "HIT"

    def computed_again():
        r = s.predict("short lived")
        assert r.status_code == 200 and r.headers["X-Cache"] in ("HIT", "MISS"), r.headers
        return r.headers["X-Cache"] == "MISS"

    # HITs until the entry expires, then a MISS: never before its second is up
    wait_until(computed_again, 30, "the cached answer to expire", interval=0.05)
    assert time.monotonic() - stored_before >= 1.0
    m = s.metrics()
    assert sample(m, "aiserve_cache_evictions_total", reason="expired") >= 1
    assert sample(m, "aiserve_cache_evictions_total", reason="capacity") == 0


def test_50_identical_concurrent_requests_run_once(server_factory):
    # The batcher holds a lone text up to 3 s waiting for company: the
    # leader's text waits there while the 49 others arrive and join it.
    s = server_factory("--max-queue-delay-us", "3s")
    before = s.metrics()
    n = 50
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(30)
        return requests.post(s.url("/predict"), json={"text": "the same question, fifty times"},
                             headers={"X-Request-ID": "co-%d" % i}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    assert all(r.status_code == 200 for r in results), [(r.status_code, r.text) for r in results]
    assert len({r.content for r in results}) == 1              # one answer, byte for byte
    assert all(r.headers["X-Request-ID"] == "co-%d" % i for i, r in enumerate(results))
    assert all(r.headers["X-Cache"] == "MISS" for r in results)
    after = s.metrics()
    b0, t0 = inferences(before)
    b1, t1 = inferences(after)
    assert (b1 - b0, t1 - t0) == (1, 1)                         # one inference, one text
    assert (sample(after, "aiserve_tokens_total", model="sentiment", version="1")
            - sample(before, "aiserve_tokens_total", model="sentiment", version="1")) > 0
    assert sample(after, "aiserve_cache_coalesced_total") == 49
    assert sample(after, "aiserve_cache_requests_total", result="miss") == 1
    assert sample(after, "prediction_requests_total", endpoint="/predict", status="200") >= 50
    assert s.predict("the same question, fifty times").headers["X-Cache"] == "HIT"


def test_errors_not_cached_and_shared_with_followers(server_factory):
    # A deadline of 1 ms passes while the text waits for company (1 s):
    # every request answers 504.
    s = server_factory("--request-timeout", "1ms", "--max-queue-delay-us", "1s")
    r = s.predict("too slow")
    assert_error(r, 504, "timeout")
    assert "X-Cache" not in r.headers
    assert_error(s.predict("too slow"), 504, "timeout")          # not served from the cache
    n = 10
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(30)
        return requests.post(s.url("/predict"), json={"text": "too slow"},
                             headers={"X-Request-ID": "err-%d" % i}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    for i, r in enumerate(results):
        err = assert_error(r, 504, "timeout")
        assert err["request_id"] == "err-%d" % i                 # the follower's own id
    m = s.metrics()
    assert sample(m, "aiserve_cache_entries") == 0
    coalesced = sample(m, "aiserve_cache_coalesced_total")
    assert coalesced == n - 1
    # the model failed once per leader; followers do not count as model errors
    assert sample(m, "model_errors_total", error_type="timeout") == 2 + n - coalesced
    assert s.alive()


def test_overload_shared_with_followers(server_factory):
    # Queue of one text, all taken by a long request held for 2 s: the
    # identical requests coalesce onto one leader that is shed (503 with
    # Retry-After), and each follower gets that 503 too.
    s = server_factory("--max-queue-size", "1", "--max-inputs", "1", "--max-queue-delay-us", "2s",
                       "--max-batch-size", "2")
    blocker = threading.Thread(target=lambda: s.predict("holding the queue", timeout=60))
    blocker.start()
    wait_until(lambda: sample(s.metrics(), "aiserve_queue_depth", model="sentiment", version="1") >= 1, 10,
               "the queue to fill", interval=0.01)
    n = 8
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(30)
        return requests.post(s.url("/predict"), json={"text": "shed me"}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    blocker.join(60)
    for r in results:
        assert_error(r, 503, "overloaded")
        assert r.headers.get("Retry-After") == "1"
    m = s.metrics()
    assert sample(m, "aiserve_requests_shed_total") + sample(m, "aiserve_cache_coalesced_total") == n


def test_cache_disabled(server_factory):
    s = server_factory("--no-cache")
    before = inferences(s.metrics())
    for _ in range(3):
        r = s.predict("again and again")
        assert r.status_code == 200 and "X-Cache" not in r.headers
    assert inferences(s.metrics())[1] - before[1] == 3
    assert "aiserve_cache_requests_total" not in s.get("/metrics").text
