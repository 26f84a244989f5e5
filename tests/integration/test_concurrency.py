"""test_concurrency.py - many clients at once get correct, consistent answers,
are batched together, and do not slow the health and metrics endpoints.
"""

import json
import socket
import threading
import time

import pytest
import requests

from harness import read_response, sample, wait_until

TEXTS = [
    "I love this movie, it was wonderful",
    "terrible, boring and far too long",
    "The service was okay I guess",
    "best purchase I have made all year",
    "it broke after two days, never again",
    "Ünïcödé façade — naïve café 😀",
    "meh",
    "an absolute masterpiece of modern cinema, I cried twice and laughed more",
]

CLIENTS = 200
ROUNDS = 3


def _post(sock, path, payload, rid):
    body = json.dumps(payload).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), rid.encode(), len(body), body))
    resp = read_response(sock, timeout=60)
    assert resp is not None, "server closed keep-alive connection %s" % rid
    return resp


def test_200_concurrent_keepalive_clients(server_factory):
    s = server_factory("--no-cache")  # every request must reach the batcher
    # reference answers: one text per request, one at a time
    ref = {}
    for t in TEXTS:
        r = s.predict(t)
        assert r.status_code == 200
        ref[t] = r.json()

    barrier = threading.Barrier(CLIENTS)
    errors = []
    answered = [0]
    lock = threading.Lock()

    def client(i):
        try:
            with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
                barrier.wait(60)
                for k in range(ROUNDS):
                    rid = "c%d-%d" % (i, k)
                    if (i + k) % 3 == 2:
                        texts = [TEXTS[(i + k + j) % len(TEXTS)] for j in range(5)]
                        resp = _post(sock, "/predict", {"texts": texts}, rid)
                        assert resp.status == 200, resp
                        preds = resp.json()["predictions"]
                        assert len(preds) == len(texts)
                        for t, p in zip(texts, preds):
                            assert p["label"] == ref[t]["label"], (t, p, ref[t])
                            assert p["confidence"] == pytest.approx(ref[t]["confidence"], abs=1e-6)
                    else:
                        t = TEXTS[(i * 7 + k) % len(TEXTS)]
                        path = "/predict" if k % 2 == 0 else "/v1/models/sentiment/predict"
                        resp = _post(sock, path, {"text": t}, rid)
                        assert resp.status == 200, resp
                        body = resp.json()
                        assert body["label"] == ref[t]["label"], (t, body, ref[t])
                        assert body["confidence"] == pytest.approx(ref[t]["confidence"], abs=1e-6)
                        assert (body["model"], body["model_version"]) == ("sentiment", "1")
                    assert resp.header("x-request-id") == rid
                    assert (resp.header("connection") or "").lower() != "close", resp
                    with lock:
                        answered[0] += 1
        except BaseException as e:  # noqa: B902 - reported below
            with lock:
                errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "clients still waiting after 120 s"
    assert not errors, "%d of %d clients failed; first: %s" % (len(errors), CLIENTS, errors[:5])
    assert answered[0] == CLIENTS * ROUNDS

    m = s.metrics()
    # concurrent requests were batched: some forward pass ran more than one text
    texts_run = sample(m, "aiserve_batch_size_sum", model="sentiment", version="1")
    batches = sample(m, "aiserve_batch_size_count", model="sentiment", version="1")
    assert batches < texts_run, (batches, texts_run)
    assert s.alive()


def test_health_and_metrics_answer_while_predict_saturated(server_factory):
    s = server_factory("--no-cache")  # every request must reach the batcher
    stop = threading.Event()
    counts = {"ok": 0, "other": 0}
    lock = threading.Lock()
    long_texts = [" ".join(["word%d" % ((j * 7 + i) % 97) for j in range(100)]) for i in range(64)]

    def flood():
        sess = requests.Session()
        while not stop.is_set():
            try:
                r = sess.post(s.url("/predict"), json={"texts": long_texts}, timeout=60)
                with lock:
                    counts["ok" if r.status_code == 200 else "other"] += 1
            except requests.RequestException:
                with lock:
                    counts["other"] += 1

    floods = [threading.Thread(target=flood) for _ in range(16)]
    for t in floods:
        t.start()
    try:
        # wait until the model is busy: the queue has work in it
        wait_until(lambda: sample(s.metrics(), "aiserve_queue_depth", model="sentiment", version="1") > 0, 20,
                   "the model to be saturated (work in its queue)", interval=0)
        worst = 0.0
        for _ in range(10):
            for path in ("/health", "/health/ready", "/metrics"):
                t0 = time.monotonic()
                r = requests.get(s.url(path), timeout=30)
                worst = max(worst, time.monotonic() - t0)
                assert r.status_code == 200
        assert worst < 2.0, "a health or metrics request took %.2f s while predict was saturated" % worst
    finally:
        stop.set()
        for t in floods:
            t.join(60)
    assert counts["ok"] > 0 and counts["other"] == 0, counts
