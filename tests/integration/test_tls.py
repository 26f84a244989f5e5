"""test_tls.py - HTTPS with the real binary: certificates made at test time
with the `openssl` command-line tool (Debian's openssl package), curl and
Python's ssl against them, TLS 1.2 as the floor, a certificate chain with an
intermediate CA, plain HTTP and silent clients on the TLS port, the raw
limits answered over TLS, and the start refused for a bad certificate, a key
that does not match it, or only one of --tls-cert / --tls-key.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest
import requests

from harness import BIN, MODELS, Server, assert_error, read_response

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


def openssl(*args, cwd):
    assert OPENSSL, "the openssl command-line tool is needed (scripts/install-deps.sh installs it)"
    p = subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()


def self_signed(d, name="server"):
    """A self-signed certificate for 127.0.0.1 / localhost: (cert, key) paths."""
    cert, key = d / (name + "-cert.pem"), d / (name + "-key.pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=d)
    return cert, key


@pytest.fixture
def tls(tmp_path):
    return self_signed(tmp_path)


def https_server(server_factory, cert, key, *args, ca=None, **kw):
    return server_factory("--tls-cert", str(cert), "--tls-key", str(key), *args, ca=ca or cert, **kw)


def client_context(cafile, **versions):
    ctx = ssl.create_default_context(cafile=str(cafile))
    for k, v in versions.items():
        setattr(ctx, k, v)
    return ctx


def tls_connect(port, cafile, timeout=10, **versions):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context(cafile, **versions).wrap_socket(raw, server_hostname="127.0.0.1")


def start_fails(*args):
    """Runs `aiserve serve ARGS`, which must refuse to start: (stdout lines as JSON, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env["AISERVE_KEYS_FILE"] = "/nonexistent/aiserve-tests/keys.json"
    p = subprocess.run([BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--model-repository", MODELS,
                        *map(str, args)], capture_output=True, timeout=60, env=env)
    assert p.returncode == 2, (p.returncode, p.stdout.decode()[-2000:], p.stderr.decode())
    lines = [json.loads(l) for l in p.stdout.decode().splitlines() if l.startswith("{")]
    assert not [l for l in lines if l["msg"] == "listening"]
    return lines, p.stderr.decode()


def startup_error(lines):
    failed = [l for l in lines if l["msg"] == "startup_failed"]
    assert failed, lines
    return failed[0]["error"]


# -- serving ------------------------------------------------------------------

def test_curl_predicts_over_https(server_factory, tls):
    cert, key = tls
    s = https_server(server_factory, cert, key)
    assert s.wait_log("listening")["tls"] is True
    if CURL:
        p = subprocess.run([CURL, "-sS", "--fail-with-body", "--cacert", str(cert), "-H",
                            "Content-Type: application/json", "-d", '{"text": "a wonderful film"}',
                            "https://127.0.0.1:%d/predict" % s.port], capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        body = json.loads(p.stdout)
    else:  # the same request through Python's ssl
        import http.client
        c = http.client.HTTPSConnection("127.0.0.1", s.port, context=client_context(cert), timeout=30)
        c.request("POST", "/predict", body='{"text": "a wonderful film"}',
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        body = json.loads(r.read())
    assert body["label"] == "POSITIVE" and body["model"] == "sentiment"
    # requests over HTTPS, keep-alive, several requests on one connection.
    with requests.Session() as sess:
        for i in range(5):
            r = sess.post(s.url("/predict"), json={"texts": ["great fun", "a dull mess"]}, verify=str(cert),
                          timeout=30)
            assert r.status_code == 200, r.text
            assert [p["label"] for p in r.json()["predictions"]] == ["POSITIVE", "NEGATIVE"]
            assert r.headers["X-Request-ID"]
    assert s.get("/health").json()["status"] == "healthy"
    assert_error(s.post("/predict", data=b"{nope"), 400, "invalid_json")


def test_untrusted_client_refuses_and_plain_url_fails(server_factory, tls):
    cert, key = tls
    s = https_server(server_factory, cert, key)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(s.url("/health"), timeout=10, verify=True)       # system CAs: not trusted
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get("http://127.0.0.1:%d/health" % s.port, timeout=10)
    assert s.get("/health/live").status_code == 200


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_accepted(server_factory, tls, version):
    cert, key = tls
    s = https_server(server_factory, cert, key)
    v = getattr(ssl.TLSVersion, version)
    with tls_connect(s.port, cert, minimum_version=v, maximum_version=v) as c:
        assert c.version() == version.replace("_", ".")
        c.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = read_response(c)
    assert r.status == 200


def test_tls_1_1_refused(server_factory, tls):
    cert, key = tls
    s = https_server(server_factory, cert, key)
    ctx = client_context(cert)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # deprecated: that is the point
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # let this client offer TLS 1.1 at all
    except (ValueError, ssl.SSLError) as e:
        pytest.skip("this Python/OpenSSL cannot speak TLS 1.1: %s" % e)
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    try:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        raw.close()
    if "NO_PROTOCOLS_AVAILABLE" in str(e.value) or "no protocols available" in str(e.value):
        pytest.skip("this OpenSSL build has TLS 1.1 disabled on the client side")
    assert "PROTOCOL_VERSION" in str(e.value).upper() or "VERSION" in str(e.value).upper(), e.value
    assert s.get("/health/live").status_code == 200


def test_certificate_chain_with_intermediate(server_factory, tmp_path):
    """The chain file holds the leaf and then the intermediate; the client
    trusts only the root."""
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.pem",
            "-days", "2", "-subj", "/CN=aiserve test root",
            "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "inter.key", "-out", "inter.csr",
            "-subj", "/CN=aiserve test intermediate", cwd=d)
    (d / "inter.ext").write_text("basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign\n")
    openssl("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
            "-out", "inter.pem", "-days", "2", "-extfile", "inter.ext", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
            "-subj", "/CN=localhost", cwd=d)
    (d / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "inter.pem", "-CAkey", "inter.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=d)
    (d / "chain.pem").write_bytes((d / "leaf.pem").read_bytes() + (d / "inter.pem").read_bytes())
    s = https_server(server_factory, d / "chain.pem", d / "leaf.key", ca=d / "root.pem")
    r = s.predict("a fine film")
    assert r.status_code == 200, r.text


# -- hostile and confused clients ----------------------------------------------

def test_plain_http_on_tls_port_is_closed(server_factory, tls):
    cert, key = tls
    s = https_server(server_factory, cert, key, "--read-timeout", "3s")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            c.settimeout(10)
            got = b""
            try:
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            assert time.monotonic() - t0 < 5, "the server held a plain-HTTP client"
            assert not got.startswith(b"HTTP/"), got[:200]     # never answered in clear
    assert s.alive()
    assert s.predict("still serving").status_code == 200


def test_silent_and_slow_tls_clients_are_cut_off(server_factory, tls):
    """The handshake counts against read_timeout: a client that connects and
    says nothing, or handshakes and then sends half a request, is closed."""
    cert, key = tls
    s = https_server(server_factory, cert, key, "--read-timeout", "1s")
    silent = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    slow = tls_connect(s.port, cert)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")       # never finished
    t0 = time.monotonic()
    assert silent.recv(100) == b""
    try:
        assert slow.recv(100) == b""
    except (ConnectionResetError, ssl.SSLError):
        pass
    assert time.monotonic() - t0 < 5
    silent.close()
    slow.close()
    assert s.get("/health/live").status_code == 200


def test_limits_answered_over_tls(server_factory, tls):
    """conn.c's raw checks see the decrypted bytes and answer in TLS."""
    cert, key = tls
    s = https_server(server_factory, cert, key)
    for head, status, code in [
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413, "body_too_large"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
         400, "invalid_framing"),
    ]:
        with tls_connect(s.port, cert) as c:
            c.sendall(head)
            r = read_response(c)
        assert r is not None, status
        assert_error(r, status, code)
    assert s.predict("still serving").status_code == 200


def test_connection_flood_on_tls_port(server_factory, tls):
    """Raw connections past --max-connections, silent or sending garbage,
    then HTTPS serves again."""
    cert, key = tls
    s = https_server(server_factory, cert, key, "--max-connections", "20", "--read-timeout", "1s",
                     clean_exit=False)
    for rnd in range(3):
        socks, lock = [], threading.Lock()

        def flood(garbage):
            for _ in range(15):
                try:
                    c = socket.create_connection(("127.0.0.1", s.port), timeout=2)
                    if garbage:
                        c.sendall(b"\x16\x03\x01\x00\x05hello" if rnd % 2 else b"GET / HTTP/1.1\r\n\r\n")
                except OSError:
                    return
                with lock:
                    socks.append(c)

        threads = [threading.Thread(target=flood, args=(i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for c in socks:
            c.close()
        s.wait_for("/health/live", 200, timeout=10)         # HTTPS answers again after the flood
    assert s.predict("after the flood").status_code == 200
    assert s.stop(timeout=15) == 0


# -- refused starts ---------------------------------------------------------

def test_key_that_does_not_match_the_certificate(tmp_path):
    cert, _ = self_signed(tmp_path, "a")
    _, other_key = self_signed(tmp_path, "b")
    lines, _ = start_fails("--tls-cert", cert, "--tls-key", other_key)
    err = startup_error(lines)
    assert str(other_key) in err and str(cert) in err and "does not match" in err, err
    assert "error:" in err          # OpenSSL's own error text


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_only_one_of_cert_and_key(tmp_path, given):
    cert, key = self_signed(tmp_path)
    _, stderr = start_fails(given, cert if given == "--tls-cert" else key)
    assert "server.tls_cert" in stderr and "server.tls_key" in stderr and given in stderr, stderr
    assert "both" in stderr


def test_missing_or_bad_certificate_files(tmp_path):
    cert, key = self_signed(tmp_path)
    missing = tmp_path / "nope.pem"
    err = startup_error(start_fails("--tls-cert", missing, "--tls-key", key)[0])
    assert str(missing) in err and "No such file" in err, err
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    err = startup_error(start_fails("--tls-cert", junk, "--tls-key", key)[0])
    assert str(junk) in err and "certificate" in err and "error:" in err, err
    err = startup_error(start_fails("--tls-cert", cert, "--tls-key", junk)[0])
    assert str(junk) in err and "key" in err and "error:" in err, err
    # A passphrase-protected key is refused, never prompted for.
    locked = tmp_path / "locked.pem"
    openssl("pkey", "-in", key, "-out", locked, "-aes256", "-passout", "pass:secret", cwd=tmp_path)
    err = startup_error(start_fails("--tls-cert", cert, "--tls-key", locked)[0])
    assert str(locked) in err, err
