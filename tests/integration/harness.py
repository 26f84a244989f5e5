"""harness.py - helpers that run the real aiserve binary for integration tests.

A Server starts `aiserve serve --port 0` on 127.0.0.1, reads its JSON log lines
from stdout in a thread (kept for assertions), learns the port from the
"listening" line, waits for /health/ready (or only /health/live), and is
always stopped at teardown: SIGTERM, then SIGKILL if it has not exited within
the grace period. A server started by a fixture must also exit 0 on that
SIGTERM unless the test says otherwise.

Nothing here changes the server; tests must never depend on timing beyond
generous bounds that express behaviour. A test that needs something to have
happened waits for it with wait_until (an observable condition, a deadline),
never with a fixed sleep.
"""

import json
import os
import re
import signal
import socket
import shutil
import subprocess
import tempfile
import threading
import time
import weakref

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AISERVE_BIN", os.path.join(ROOT, "build", "aiserve"))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")

START_TIMEOUT = 30.0   # generous: the machine is shared with builds and training
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.02   # between two looks at a condition


def create_key(keys_file, name, scopes="predict"):
    """`aiserve keys create` in keys_file (with a clean AISERVE_* environment);
    the key it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "keys", "create", "--keys-file", str(keys_file), "--name", name, "--scopes", scopes],
                       capture_output=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode().strip()


def artifacts_dir():
    """Where tests leave files for people to look at (screenshots):
    $AISERVE_ARTIFACTS, else test-artifacts/ in the working directory (the
    build's tests/ folder under ctest)."""
    d = os.environ.get("AISERVE_ARTIFACTS") or os.path.join(os.getcwd(), "test-artifacts")
    os.makedirs(d, exist_ok=True)
    return d


def wait_until(predicate, timeout=START_TIMEOUT, what="the condition", interval=POLL_INTERVAL):
    """Polls predicate() until it returns something other than None or False
    and returns that (so a 4xx response, 0 or [] count as an answer: return
    None for "not yet"). Fails with an AssertionError naming `what` (a string,
    or a function giving one, called only then: for details such as the
    server's output) when timeout seconds pass first. Tests wait for an
    observable condition this way, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("still waiting after %g s for %s"
                                 % (timeout, what() if callable(what) else what))
        time.sleep(interval)


class Server:
    """One aiserve process on a free loopback port."""

    def __init__(self, *args, repo=MODELS, env=None, use_repo_flag=True, ca=None):
        self.args = list(args)
        # A CA file (the test certificate) when the server speaks HTTPS
        # (--tls-cert / --tls-key in args): URLs use https and requests
        # verifies the server against it.
        self.ca = str(ca) if ca else None
        self.repo = repo
        self.env = env
        self.use_repo_flag = use_repo_flag
        self.proc = None
        self.port = None
        self.lines = []          # raw stdout lines
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._reader = None
        self.returncode = None
        self.batch_dir = None

    # -- process ---------------------------------------------------------
    def start(self, wait="ready"):
        cmd = [BIN, "serve", "--host", "127.0.0.1", "--port", "0"]
        if self.use_repo_flag and self.repo is not None:
            cmd += ["--model-repository", str(self.repo)]
        cmd += self.args
        env = dict(os.environ)
        # Settings from the caller's environment must not leak into tests.
        for k in list(env):
            if k.startswith("AISERVE_") and k != "AISERVE_BIN":
                del env[k]
        env.pop("MODEL_PATH", None)
        env.pop("LOG_LEVEL", None)
        # No API keys unless a test asks for them (--keys-file wins over
        # this): a data/keys.json in the working directory must not turn
        # authentication on for every test.
        env["AISERVE_KEYS_FILE"] = "/nonexistent/aiserve-tests/keys.json"
        # No rate limits unless a test asks for them (--rate-limit wins):
        # the suite sends far more than 100 requests a minute from one
        # address. The response cache keeps its default (on); tests that
        # count inferences start their server with --no-cache.
        env["AISERVE_RATE_LIMIT"] = "false"
        # Batch jobs in a directory of this server's own (the job database
        # takes an exclusive lock: two servers must never share one by
        # accident). A test that restarts a server on the same jobs passes
        # --batch-data-dir (a flag wins over this).
        if self.batch_dir is None:
            self.batch_dir = tempfile.mkdtemp(prefix="aiserve-jobs-")
            weakref.finalize(self, shutil.rmtree, self.batch_dir, True)
        env["AISERVE_BATCH_DATA_DIR"] = self.batch_dir
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self._err = []
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()
        if not self._listening.wait(START_TIMEOUT):
            self.kill()
            raise RuntimeError("server did not log 'listening':\n" + self.output())
        if wait == "ready":
            self.wait_for("/health/ready")
        elif wait == "live":
            self.wait_for("/health/live")
        return self

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self.port is None:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("msg") == "listening":
                    self.port = int(obj["port"])
                    self._listening.set()

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self._err.append(raw.decode("utf-8", "replace"))

    def wait_for(self, path, status=200, timeout=START_TIMEOUT):
        """The first answer of GET path with this status."""
        last = [None]

        def answered():
            if self.proc.poll() is not None:
                raise RuntimeError("server exited (%s) while waiting for %s:\n%s"
                                   % (self.proc.returncode, path, self.output()))
            try:
                r = requests.get(self.url(path), timeout=2, verify=self.ca or True)
            except requests.RequestException as e:
                last[0] = e
                return None
            last[0] = r.status_code
            return r if r.status_code == status else None

        return wait_until(answered, timeout, lambda: "%s to answer %d (last: %r):\n%s"
                          % (path, status, last[0], self.output()))

    def wait_log(self, msg, timeout=START_TIMEOUT, nth=1, **fields):
        """The nth log line msg whose fields have these values, once written."""
        def logged():
            found = [e for e in self.logs(msg) if all(e.get(k) == v for k, v in fields.items())]
            return found[nth - 1] if len(found) >= nth else None

        return wait_until(logged, timeout, lambda: "log line %r %r (#%d):\n%s"
                          % (msg, fields, nth, self.output()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the server and wait for it; SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.returncode = "killed after %.0fs" % timeout
                return self.returncode
        self.returncode = self.proc.returncode
        self._reader.join(5)        # every line it wrote is read once stop returns
        self._err_reader.join(5)
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # -- output ----------------------------------------------------------
    def output(self):
        with self._lock:
            out = "\n".join(self.lines[-60:])
        return out + "\n[stderr]\n" + "".join(getattr(self, "_err", [])[-30:])

    def raw_lines(self):
        with self._lock:
            return list(self.lines)

    def logs(self, msg=None):
        out = []
        for line in self.raw_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if msg is None or obj.get("msg") == msg:
                out.append(obj)
        return out

    # -- HTTP ------------------------------------------------------------
    def url(self, path):
        return "%s://127.0.0.1:%d%s" % ("https" if self.ca else "http", self.port, path)

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        if self.ca:
            kw.setdefault("verify", self.ca)
        return requests.get(self.url(path), **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 30)
        if self.ca:
            kw.setdefault("verify", self.ca)
        return requests.post(self.url(path), **kw)

    def options(self, path, **kw):
        kw.setdefault("timeout", 30)
        if self.ca:
            kw.setdefault("verify", self.ca)
        return requests.options(self.url(path), **kw)

    def predict(self, text, path="/predict", **kw):
        return self.post(path, json={"text": text}, **kw)

    def raw(self, data, timeout=10):
        return raw_request(self.port, data, timeout=timeout)

    def metrics(self):
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        return parse_prometheus(r.text)

    def assert_serving(self):
        """The process is alive and a good /predict still works."""
        assert self.alive(), "server died:\n" + self.output()
        r = self.predict("still serving")
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["label"] in ("NEGATIVE", "POSITIVE")


def make_repo(tmp_path, **models):
    """A model repository in tmp_path: name=(source_dir, version) or name=source_dir
    (version 1). Version dirs are symlinks to the source model directories."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    for name, src in models.items():
        version = 1
        if isinstance(src, tuple):
            src, version = src
        d = repo / name
        d.mkdir(exist_ok=True)
        os.symlink(src, d / str(version))
    return repo


def fixture_model(name):
    return os.path.join(FIXTURES, name)


SENTIMENT = os.path.join(MODELS, "sentiment", "1")


# -- Prometheus text ---------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(v):
    return v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_prometheus(text):
    """Prometheus text 0.0.4 -> {(name, frozenset({(label, value), ...})): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "unparsable metrics line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        pairs = []
        pos = 0
        while pos < len(labels):
            lm = _LABEL.match(labels, pos)
            assert lm, "unparsable labels in %r" % line
            pairs.append((lm.group(1), _unescape(lm.group(2))))
            pos = lm.end()
        key = (name, frozenset(pairs))
        assert key not in out, "duplicate series %r" % line
        out[key] = float(value)
    return out


def sample(metrics, name, **labels):
    """Value of one series (0.0 when absent)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)


def series(metrics, name):
    """[(labels dict, value)] for every series of a metric name."""
    return [(dict(k[1]), v) for k, v in metrics.items() if k[0] == name]


# -- raw HTTP ------------------------------------------------------------------

class RawResponse:
    def __init__(self, status, reason, headers, body, raw):
        self.status = status
        self.reason = reason
        self.headers = headers      # list of (name lowercased, value)
        self.body = body
        self.raw = raw

    def header(self, name):
        vals = [v for k, v in self.headers if k == name.lower()]
        return vals[0] if vals else None

    def header_all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "RawResponse(%r)" % self.raw[:600]


_leftover = weakref.WeakKeyDictionary()   # socket -> bytes read past the last response


def read_response(sock, timeout=10):
    """Read one HTTP/1.1 response from sock (Content-Length or until close);
    bytes of a following (pipelined) response are kept for the next call.
    Returns a RawResponse, or None if the server closed without answering."""
    sock.settimeout(timeout)
    buf = _leftover.pop(sock, b"")

    def recv():
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""

    while b"\r\n\r\n" not in buf:
        chunk = recv()
        if not chunk:
            return None if not buf else _parse(buf, b"")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    resp = _parse(head + b"\r\n\r\n", b"")
    if resp.status is not None and 100 <= resp.status < 200:
        _leftover[sock] = rest
        return resp
    length = resp.header("content-length")
    body = rest
    if length is not None:
        n = int(length)
        while len(body) < n:
            chunk = recv()
            if not chunk:
                break
            body += chunk
        body, extra = body[:n], body[n:]
        if extra:
            _leftover[sock] = extra
    else:
        while True:
            try:
                chunk = recv()
            except socket.timeout:
                break
            if not chunk:
                break
            body += chunk
    resp.body = body
    resp.raw = head + b"\r\n\r\n" + body
    return resp


def _parse(head, body):
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers = []
    for l in lines[1:]:
        if not l:
            continue
        k, _, v = l.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body, head + body)


def raw_request(port, data, timeout=10):
    """Send raw bytes on a fresh connection and read one response (None if the
    server closed the connection without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(s, timeout)


def assert_error(resp, status, code=None):
    """resp (requests.Response or RawResponse) is an error of the documented shape."""
    if isinstance(resp, RawResponse):
        got_status, body, rid = resp.status, resp.body, resp.header("x-request-id")
    else:
        got_status, body, rid = resp.status_code, resp.content, resp.headers.get("X-Request-ID")
    assert got_status == status, (got_status, body[:500])
    obj = json.loads(body)
    err = obj["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    # FastAPI's field, so the seed service's clients read errors unchanged.
    assert obj["detail"] == err["message"], obj
    if code is not None:
        if isinstance(code, (tuple, set, list)):
            assert err["code"] in code, err
        else:
            assert err["code"] == code, err
    assert rid, "no X-Request-ID on the error"
    assert err["request_id"] == rid
    return err


HEX32 = re.compile(r"^[0-9a-f]{32}$")


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, without persistence.
    restart() brings it back on the same port (as after a crash)."""

    def __init__(self, password=None):
        self.port = free_port()
        self.password = password
        self.proc = None

    def start(self, timeout=START_TIMEOUT):
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--protected-mode", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def answers():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: %s" % self.proc.stdout.read().decode())
            try:
                return self.command("PING") in ("PONG", "NOAUTH Authentication required.")
            except OSError:
                return False

        wait_until(answers, timeout, "redis-server to answer on port %d" % self.port)
        return self

    def url(self, db=0):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d/%d" % (auth, self.port, db)

    def command(self, *args, db=0):
        """One command through a fresh connection (RESP); returns the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rwb")
            pre = []
            if self.password:
                pre.append(("AUTH", self.password))
            if db:
                pre.append(("SELECT", str(db)))
            for cmd in pre + [args]:
                f.write(b"*%d\r\n" % len(cmd))
                for a in cmd:
                    a = a if isinstance(a, bytes) else str(a).encode()
                    f.write(b"$%d\r\n%s\r\n" % (len(a), a))
            f.flush()
            replies = [_resp_read(f) for _ in range(len(pre) + 1)]
            return replies[-1]

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self):
        self.kill()
        return self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _resp_read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise OSError("unexpected reply %r" % line)
