"""test_lifecycle.py - start-up logs, graceful drain on SIGTERM/SIGINT, the
drain timeout, and the second signal.

In-flight work is made long with --max-batch-size 1 and requests of 64 long
texts each (about 2 ms per text here), so that a signal lands while requests
are queued or running.
"""

import concurrent.futures
import json
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from harness import sample, wait_until

LONG_TEXTS = [" ".join(["word%d" % ((j * 7 + i) % 97) for j in range(100)]) for i in range(64)]


def test_startup_log_sequence(server_factory):
    s = server_factory()
    s.wait_log("ready")     # /health/ready may answer 200 a moment before the line is written
    msgs = [e["msg"] for e in s.logs()]
    for m in ("starting", "listening", "model_loaded", "ready"):
        assert m in msgs, msgs
    assert msgs.index("starting") < msgs.index("listening") < msgs.index("ready")
    assert msgs.index("model_loaded") < msgs.index("ready")
    loaded = s.logs("model_loaded")[0]
    assert loaded["model"] == "sentiment" and str(loaded["version"]) == "1"
    for e in s.logs():
        assert "time" in e and "level" in e
    rc = s.stop()
    assert rc == 0
    msgs = [e["msg"] for e in s.logs()]
    assert msgs[-2:] == ["shutting_down", "stopped"], msgs[-5:]


def _burst(s, n, barrier_timeout=30):
    """Start n requests of 64 long texts at once; returns (futures, executor)."""
    barrier = threading.Barrier(n + 1)

    def one(i):
        barrier.wait(barrier_timeout)
        try:
            r = requests.post(s.url("/predict"), json={"texts": LONG_TEXTS}, timeout=120)
            return r.status_code, r.json()
        except requests.RequestException as e:
            return "exception", repr(e)

    ex = concurrent.futures.ThreadPoolExecutor(n)
    futs = [ex.submit(one, i) for i in range(n)]
    barrier.wait(barrier_timeout)
    return futs, ex


def _completed(s):
    return sample(s.metrics(), "prediction_requests_total", endpoint="/predict", status="200")


def _wait_received(s, n, done_before, timeout=20):
    """Wait until the server has received all n requests of a burst (each is in
    flight or answered) and some are still in flight."""
    def received():
        m = s.metrics()
        in_flight = sample(m, "aiserve_http_requests_in_flight") - 1     # minus this scrape
        done = sample(m, "prediction_requests_total", endpoint="/predict", status="200") - done_before
        if in_flight + done < n:
            return False
        assert in_flight > 0, "the burst finished before the signal could be sent"
        return True

    wait_until(received, timeout, "the server to receive all %d requests" % n, interval=0.005)


def _connect_refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            # accepted: the server must at least not answer a new request
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            c.settimeout(5)
            data = c.recv(100)
            return not data.startswith(b"HTTP/1.1 200")
    except (ConnectionRefusedError, ConnectionResetError):
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_drain_loses_nothing(server_factory, sig):
    # Drain and request timeouts far above the burst's compute time, even
    # under ASan on a busy machine: this test is about losing nothing;
    # test_drain_timeout_bounds_shutdown is about the bound.
    s = server_factory("--no-cache", "--max-batch-size", "1", "--max-queue-size", "100000",
                       "--drain-timeout", "300s", "--request-timeout", "300s", clean_exit=False)
    expected = s.post("/predict", json={"texts": LONG_TEXTS}).json()["predictions"]
    done_before = _completed(s)
    futs, ex = _burst(s, 20)
    try:
        # Every request of the burst has reached the server (none is still in
        # the kernel's accept queue): all of them are in flight or answered.
        _wait_received(s, 20, done_before)
        s.send_signal(sig)
        down = s.wait_log("shutting_down", timeout=10)
        assert down["in_flight"] > 0, down       # the signal really landed mid-burst
        still_draining = s.alive()
        refused = _connect_refused(s.port)
        results = [f.result(120) for f in futs]
    finally:
        ex.shutdown(wait=True)
    rc = s.stop(timeout=60)
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d in-flight requests lost: %r" % (len(bad), len(results), bad[:3])
    for status, body in results:
        assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
    assert refused, "a new connection was served after %s (server still draining: %s)" % (
        signal.Signals(sig).name, still_draining)
    assert rc == 0, s.output()
    stopped = s.logs("stopped")
    assert stopped and stopped[-1]["unfinished_requests"] == 0, s.output()


def _read_http_response(sock):
    """(status line, headers dict, body) of one Content-Length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head: %r" % data[:200]
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed after %d of %d body bytes" % (len(body), length)
        body += chunk
    return lines[0], headers, body


def test_drain_delivers_an_answer_the_client_has_not_read_yet(server_factory):
    # A request counts as done once it is answered, but a large answer can
    # still sit in the connection's buffer behind a slow reader: the server
    # must not close the connection under it when it stops. 40,000 short
    # texts make a 1.8 MB answer, far more than the socket buffers hold
    # while this client reads nothing (the kernel held about 0.5 MB).
    n = 40000
    s = server_factory("--no-cache", "--max-inputs", str(n), "--max-queue-size", str(n),
                       "--max-body-size", "8MiB", clean_exit=False)
    done_before = _completed(s)
    body = json.dumps({"texts": ["w%d" % (i % 50) for i in range(n)]}).encode()
    with socket.socket() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.connect(("127.0.0.1", s.port))
        c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        wait_until(lambda: _completed(s) > done_before, 120, "the request to be answered")   # not yet read
        s.send_signal(signal.SIGTERM)
        s.wait_log("shutting_down", timeout=10)
        c.settimeout(30)
        status, headers, got = _read_http_response(c)
    assert status == "HTTP/1.1 200 OK"
    assert len(json.loads(got)["predictions"]) == n
    assert s.stop(timeout=60) == 0, s.output()


def test_idle_keepalive_connection_does_not_hold_shutdown(server_factory):
    s = server_factory(clean_exit=False)
    sess = requests.Session()
    assert sess.post(s.url("/predict"), json={"text": "hi"}).status_code == 200
    # sess keeps its connection open and idle
    s.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("an idle keep-alive connection kept the server from exiting for 10 s")
    assert rc == 0
    sess.close()


def test_drain_timeout_bounds_shutdown(server_factory):
    s = server_factory("--no-cache", "--max-batch-size", "1", "--max-queue-size", "100000", "--drain-timeout", "300ms", clean_exit=False)
    done_before = _completed(s)
    futs, ex = _burst(s, 40)          # about 5 s of work
    try:
        _wait_received(s, 40, done_before)
        t0 = time.monotonic()
        s.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("server still running 10 s after SIGTERM with --drain-timeout 300ms")
        took = time.monotonic() - t0
        results = [f.result(120) for f in futs]
    finally:
        ex.shutdown(wait=True)
    s.stop()
    stopped = s.logs("stopped")
    assert stopped, s.output()
    # the work could not all have finished: the timeout, not the work, ended the drain
    unfinished = stopped[-1]["unfinished_requests"]
    lost = [r for r in results if r[0] != 200]
    assert unfinished > 0 and lost, (took, unfinished, len(lost))
    assert took < 3, "SIGTERM with --drain-timeout 300ms took %.1f s to stop the server" % took


def test_second_signal_exits_at_once(server_factory):
    s = server_factory("--no-cache", "--max-batch-size", "1", "--max-queue-size", "100000", clean_exit=False)
    done_before = _completed(s)
    futs, ex = _burst(s, 40)          # about 5 s of work, drain timeout 30 s
    try:
        _wait_received(s, 40, done_before)
        s.send_signal(signal.SIGTERM)
        s.wait_log("shutting_down", timeout=10)     # the first signal is taken: the drain is on
        assert s.alive(), "drain finished before the second signal could be sent"
        t0 = time.monotonic()
        s.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("server still running 10 s after a second SIGTERM")
        took = time.monotonic() - t0
        [f.result(120) for f in futs]
    finally:
        ex.shutdown(wait=True)
    assert took < 2, "second signal took %.1f s to stop the server" % took
    unfinished = sum(1 for f in futs if f.result()[0] != 200)
    assert unfinished > 0, "all work finished: the second signal was not what stopped the server"
