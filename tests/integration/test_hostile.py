"""test_hostile.py - malformed and hostile clients get the right error, never
hold the server, and leave it serving.

Each case is followed by a good /predict on the same server (assert_serving).
Raw sockets are used where an HTTP library would refuse or rewrite the request.
"""

import json
import socket
import threading
import time

import pytest
import requests

from harness import HEX32, MODELS, ROOT, assert_error, parse_prometheus, read_response, sample, wait_until


def post_raw(server, body, path=b"/predict", extra=b""):
    return server.raw(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def no_internal_paths(body):
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    assert ROOT not in text and MODELS not in text, text[:300]
    assert "root:" not in text
    assert ".c:" not in text           # no source locations


# -- bodies ----------------------------------------------------------------------

@pytest.mark.parametrize("name,body,statuses", [
    ("deep arrays in texts", b'{"texts": ' + b"[" * 100000 + b"]" * 100000 + b"}", (400, 422)),
    ("deep arrays top level", b"[" * 200000 + b"]" * 200000, (400, 422)),
    ("deep objects", b'{"a":' * 50000 + b"1" + b"}" * 50000, (400, 422)),
    ("unclosed deep arrays", b"[" * 300000, (400,)),
    ("huge list of texts", json.dumps({"texts": ["a"] * 200000}).encode(), (422,)),
    ("huge list of numbers", json.dumps({"texts": list(range(100000))}).encode(), (422,)),
    # RFC 8259 lets a parser limit the range of numbers: 400 or 422
    ("huge number", b'{"text": 1' + b"0" * 5000 + b"}", (400, 422)),
    ("overflowing exponent", b'{"text": 1e999999}', (400, 422)),
    ("raw NUL in string", b'{"text": "a\x00b"}', (400,)),
    ("raw control chars", b'{"text": "a\x01\x1fb"}', (400,)),
    ("raw newline in string", b'{"text": "a\nb"}', (400,)),
    ("NUL before JSON", b'\x00{"text": "a"}', (400,)),
    ("NUL after JSON", b'{"text": "a"}\x00', (400,)),
    ("lone surrogate escape", b'{"text": "\\ud800"}', (400, 422)),
    ("bad escape", b'{"text": "\\x41"}', (400,)),
    ("binary garbage", bytes(range(256)) * 8, (400,)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_hostile_bodies(server, name, body, statuses):
    resp = post_raw(server, body)
    assert resp is not None, "connection closed without a response"
    assert resp.status in statuses, (name, resp)
    err = assert_error(resp, resp.status)
    no_internal_paths(resp.body)
    assert err["code"] != "internal_error"
    server.assert_serving()


def test_escaped_nul_is_text(server):
    """"\\u0000" is valid JSON and a valid string: classified (or rejected by the schema), never 400."""
    r = server.post("/predict", data=b'{"text": "a\\u0000b"}', headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 422), (r.status_code, r.text)
    server.assert_serving()


def test_duplicate_and_extra_keys(server):
    r = server.post("/predict", data=b'{"text": "good", "text": "bad"}', headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 422), r.text
    body = {"text": "fine"}
    body.update({"k%d" % i: i for i in range(20000)})
    r = server.post("/predict", json=body)
    assert r.status_code in (200, 422), r.text
    server.assert_serving()


def test_text_and_texts_together(server):
    r = server.post("/predict", json={"text": "a", "texts": ["b"]})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert_error(r, 422, "invalid_request")
    server.assert_serving()


# -- paths -------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    b"/v1/models/..%2F..%2Fetc/predict",
    b"/v1/models/..%2F..%2F..%2F..%2Fetc%2Fpasswd/predict",
    b"/v1/models/../predict",
    b"/v1/models/%2e%2e/predict",
    b"/v1/models/..%2Fsentiment/predict",
    b"/v1/models/sentiment%2F..%2Fsentiment/predict",
    b"/v1/models/sentiment%00/predict",
    b"/v1/models/%00/predict",
    b"/v1/models/%zz/predict",
    b"/v1/models/" + b"a" * 5000 + b"/predict",
    b"/v1/models/%C3%A9%F0%9F%98%80/predict",
    b"/v1/models/%FF%FE/predict",
    b"/v1/models//predict",
    b"/v1/models/./predict",
], ids=lambda p: repr(p[:60])[2:-1])
def test_path_traversal_in_model_name(server, path):
    resp = post_raw(server, b'{"text": "hi"}', path=path)
    assert resp is not None, "connection closed without a response"
    assert resp.status in (400, 404), (path, resp)
    assert_error(resp, resp.status)
    no_internal_paths(resp.body)
    server.assert_serving()


@pytest.mark.parametrize("path", [b"/v1/models/..%2F..%2Fetc%2Fpasswd", b"/v1/models/..", b"/../../etc/passwd",
                                  b"/v1/models/..%2Fsentiment"])
def test_path_traversal_get(server, path):
    resp = server.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp is not None
    assert resp.status in (400, 404), (path, resp)
    assert_error(resp, resp.status)
    no_internal_paths(resp.body)
    server.assert_serving()


def test_very_long_url(server):
    resp = server.raw(b"GET /v1/models/" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp is None or resp.status in (414, 431), resp
    resp = server.raw(b"GET /health?" + b"q=1&" * 30000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp is None or resp.status in (414, 431), resp
    server.assert_serving()


def test_header_injection_via_path(server):
    resp = server.raw(b"GET /v1/models/x%0d%0aSet-Cookie:%20evil=1%0d%0a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 404, resp
    assert resp.header("set-cookie") is None, resp
    assert_error(resp, 404)
    server.assert_serving()


# -- headers -----------------------------------------------------------------------

@pytest.mark.parametrize("rid_line", [
    b"X-Request-ID: abc\rX-Injected: yes\r\n",           # bare CR
    b"X-Request-ID: abc\nX-Injected: yes\r\n",           # bare LF (a separate header line)
    b"X-Request-ID: abc%0d%0aX-Injected:%20yes\r\n",     # percent-encoded CRLF
    b"X-Request-ID: abc\x00def\r\n",                     # NUL
    b"X-Request-ID: \"}, \"level\": \"error\r\n",        # JSON in the id
    b"X-Request-ID: \xc3\xa9\xff\r\n",                   # non-ASCII bytes
    b"X-Request-ID: abc\r\n X-Injected: yes\r\n",        # obsolete line folding
])
def test_crlf_and_junk_in_request_id(server, rid_line):
    resp = server.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + rid_line + b"\r\n")
    assert resp is not None, "connection closed without a response"
    assert resp.status in (200, 400), resp
    assert resp.header("x-injected") is None, resp
    rid = resp.header("x-request-id")
    if resp.status == 200 or rid is not None:
        # an id that is not 1-64 of [A-Za-z0-9._:-] is replaced by a fresh one;
        # "abc" alone may be kept where the server split the line at the LF
        assert rid == "abc" or HEX32.match(rid), resp
    server.assert_serving()


def test_nul_in_header_and_request_line(server):
    for raw in (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
                b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n"):
        resp = server.raw(raw)
        assert resp is None or resp.status in (200, 400, 404), resp
    server.assert_serving()


def test_conflicting_content_length_rejected(server):
    """Two different Content-Length values is request smuggling (RFC 9112 6.3): 400."""
    body = b'{"text": "hi"}'
    resp = server.raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(body) + body)
    assert resp is not None and resp.status == 400, resp
    server.assert_serving()


@pytest.mark.parametrize("cl", [b"-1", b"abc", b"1e3", b"99999999999999999999999"])
def test_bad_content_length(server, cl):
    resp = server.raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + b"\r\n\r\n{}", timeout=5)
    assert resp is None or resp.status in (400, 413), resp
    server.assert_serving()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,     # a TLS ClientHello
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
], ids=["garbage", "tls-hello", "http-9.9", "no-path", "bad-chunk", "te-gzip"])
def test_protocol_garbage(server, raw):
    try:
        resp = server.raw(raw, timeout=3)
    except socket.timeout:
        resp = None     # still waiting for the end of a request line: bounded by --read-timeout
    assert resp is None or resp.status in (400, 404, 405, 501, 505), resp
    server.assert_serving()


def test_unknown_method(server):
    resp = server.raw(b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp is None or resp.status in (400, 405, 501), resp
    server.assert_serving()


# -- protocol features a client may use --------------------------------------------

def test_http10_without_host(server):
    body = b'{"text": "good"}'
    resp = server.raw(b"POST /predict HTTP/1.0\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert resp is not None and resp.status == 200, resp
    assert resp.json()["label"] in ("NEGATIVE", "POSITIVE")


def test_pipelined_requests_answered_in_order(server):
    reqs = b""
    for i in range(3):
        body = json.dumps({"text": "text number %d" % i}).encode()
        reqs += (b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: pipe-%d\r\n"
                 b"Content-Length: %d\r\n\r\n" % (i, len(body)) + body)
    reqs += b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: pipe-3\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(reqs)
        for i in range(4):
            resp = read_response(s)
            assert resp is not None and resp.status == 200, (i, resp)
            assert resp.header("x-request-id") == "pipe-%d" % i


def test_expect_100_continue(server):
    body = b'{"text": "good"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        s.settimeout(2)
        try:
            interim = s.recv(100)
        except socket.timeout:
            interim = b""       # a server may skip the interim answer; the client then sends anyway
        assert interim == b"" or interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(body)
        resp = read_response(s)
        assert resp is not None and resp.status == 200, resp


# -- slow clients --------------------------------------------------------------------

def _dribble(port, data, interval, stop, results, key):
    """Send data one byte at a time; record when the server closed the connection."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.settimeout(interval)
            for i in range(len(data)):
                if stop.is_set():
                    results[key] = ("stopped", time.monotonic() - t0, b"")
                    return
                s.sendall(data[i:i + 1])
                try:
                    got = s.recv(4096)
                    # the server answered (e.g. 408) or closed the connection
                    results[key] = ("closed", time.monotonic() - t0, got)
                    return
                except socket.timeout:
                    pass
            results[key] = ("sent_all", time.monotonic() - t0, b"")
    except (BrokenPipeError, ConnectionResetError) as e:
        results[key] = ("closed", time.monotonic() - t0, repr(e).encode())


SLOW_HEADERS = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 40) for i in range(200)))


def test_slowloris_does_not_delay_others(server_factory):
    s = server_factory("--max-connections", "200")
    stop = threading.Event()
    results = {}
    sess = requests.Session()           # one keep-alive connection of its own

    def connections():
        m = parse_prometheus(sess.get(s.url("/metrics"), timeout=30).text)
        return sample(m, "aiserve_http_connections")

    # the start's readiness checks have closed: this session is the only client
    wait_until(lambda: connections() == 1, 30, "the server to hold no connection but this session's")
    lorises = [threading.Thread(target=_dribble, args=(s.port, SLOW_HEADERS, 0.05, stop, results, i))
               for i in range(40)]
    for t in lorises:
        t.start()
    try:
        wait_until(lambda: connections() >= 41, 30, "the 40 slow clients (and this session) to be connected")
        worst = 0.0
        for i in range(30):
            t0 = time.monotonic()
            r = sess.post(s.url("/predict"), json={"text": "quick %d" % i}, timeout=30)
            worst = max(worst, time.monotonic() - t0)
            assert r.status_code == 200
            t0 = time.monotonic()
            assert requests.get(s.url("/health"), timeout=30).status_code == 200   # new connection
            worst = max(worst, time.monotonic() - t0)
        assert worst < 2.0, "a request took %.2f s while 40 slowloris clients were connected" % worst
    finally:
        stop.set()
        for t in lorises:
            t.join(30)


@pytest.mark.parametrize("what,data", [
    ("headers one byte at a time", SLOW_HEADERS),
    ("body one byte at a time",
     b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
     + b'{"text": "' + b"a" * 4980 + b'"}'),
], ids=["headers", "body"])
def test_slow_client_is_cut_off_by_read_timeout(server_factory, what, data):
    """--read-timeout bounds the whole request, not the gap between bytes."""
    s = server_factory("--read-timeout", "1s")
    stop = threading.Event()
    results = {}
    t = threading.Thread(target=_dribble, args=(s.port, data, 0.1, stop, results, 0))
    t.start()
    t.join(8)
    stop.set()
    t.join(10)
    outcome, took, got = results[0]
    assert outcome == "closed", "a client sending %s was still connected after %.1f s (read timeout 1 s)" % (
        what, took)
    assert took < 5, took
    assert not got.startswith(b"HTTP/1.1 200"), got
    s.assert_serving()


def test_stalled_client_is_cut_off(server_factory):
    s = server_factory("--read-timeout", "500ms")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"te")
        t0 = time.monotonic()
        c.settimeout(10)
        try:
            got = c.recv(4096)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - t0
    assert took < 5, "a stalled client held its connection for %.1f s (read timeout 500 ms)" % took
    assert not got.startswith(b"HTTP/1.1 200"), got
    s.assert_serving()


def _held_by_server(port, socks):
    """How many of the client sockets socks the server on port holds: the
    server ends of their connections in /proc/net/tcp that have a socket
    inode (an end still in the listen backlog, or closed by the server, has
    none)."""
    mine = {c.getsockname()[1] for c in socks}
    held = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in mine
                    and inode != "0"):
                held += 1
    return held


def test_connection_flood_then_serving(server_factory):
    """Rounds of many simultaneous connections past --max-connections, from
    several threads (so that both event loops accept at once); after each round
    the server serves again, and at the end it stops cleanly."""
    limit = 50
    s = server_factory("--max-connections", str(limit), "--read-timeout", "1s", clean_exit=False)
    for rnd in range(12):
        socks = []
        lock = threading.Lock()

        def connect():
            for _ in range(20):
                try:
                    c = socket.create_connection(("127.0.0.1", s.port), timeout=2)
                except OSError:
                    return
                with lock:
                    socks.append(c)

        threads = [threading.Thread(target=connect) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # before they close, the server holds as many of them as its limit allows
        want = min(len(socks), limit)
        wait_until(lambda: _held_by_server(s.port, socks) >= want, 10,
                   lambda: "the server to accept %d of the %d connections of round %d" % (want, len(socks), rnd))
        for c in socks:
            c.close()
        try:
            s.wait_for("/health", 200, timeout=5)
        except AssertionError:
            rc = s.stop(timeout=5)
            pytest.fail("no answer within 5 s after connection flood round %d (%d connections); "
                        "SIGTERM then gave %r" % (rnd, len(socks), rc))
    s.assert_serving()
    rc = s.stop(timeout=10)
    assert rc == 0, rc
