"""test_deploy_haproxy.py - the shipped deploy/haproxy/haproxy.cfg, run by a
real haproxy on loopback in front of two aiserve instances sharing a real
redis-server. Under steady load from a few bounded clients: instance A gets
SIGTERM and is restarted at once on its port (no request fails), then
instance B gets kill -9 and is restarted once HAProxy has marked it down
(only requests in flight on B when it died may fail; the recovery time, kill
to marked up again, is printed). Through HAProxy: one key's rate limit holds
across both instances, a cached answer of one instance is a hit on the
other, and a batch job submitted before the kill completes with every input.
Run with pytest -s to see the numbers.
"""

import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests

from harness import ROOT, free_port, sample, wait_until
from test_auth import create
from test_batch import dev_sentences, wait_status

HAPROXY = "/usr/sbin/haproxy"
CFG = os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")
CLIENTS = 4                 # load threads
RATE, BURST = 60, 10        # the tight key's tier: 1 request a second, 10 at once
BATCH_INPUTS = 3000
RETRIES = re.compile(r" \d+/\d+/\d+/\d+/\+?(\d+) \d+/\d+ \"")


class HAProxy:
    """haproxy -db with the shipped config; the addresses come from the
    environment variables the config reads. Its log goes to a file."""

    def __init__(self, tmp_path, backends):
        self.port = free_port()
        self.stats_port = free_port()
        self.env = dict(os.environ, HAPROXY_BIND="127.0.0.1:%d" % self.port,
                        HAPROXY_STATS_BIND="127.0.0.1:%d" % self.stats_port,
                        AISERVE_1_ADDR="127.0.0.1:%d" % backends[0],
                        AISERVE_2_ADDR="127.0.0.1:%d" % backends[1])
        self.log_path = tmp_path / "haproxy.log"
        self.proc = None

    def check(self):
        """haproxy -c: the config is valid, without a single warning."""
        p = subprocess.run([HAPROXY, "-c", "-f", CFG], env=self.env, capture_output=True, timeout=30)
        out = (p.stdout + p.stderr).decode()
        assert p.returncode == 0 and "WARNING" not in out and "ALERT" not in out, out

    def start(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", CFG], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def retried(self):
        """How many requests of the log were retried (httplog's retries
        field, after the connection counts: "+N" when redispatched)."""
        return sum(1 for m in RETRIES.finditer(self.log_path.read_text(errors="replace"))
                   if m.group(1) != "0")

    def get(self, path, **kw):
        return requests.get(self.url(path), timeout=30, **kw)

    def post(self, path, **kw):
        return requests.post(self.url(path), timeout=30, **kw)

    def servers(self):
        """{server name: its row of the stats page's CSV} (None while it does not answer)."""
        assert self.proc.poll() is None, "haproxy exited:\n" + self.output()
        try:
            r = requests.get("http://127.0.0.1:%d/stats;csv" % self.stats_port, timeout=5)
        except requests.RequestException:
            return None
        lines = r.text.splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(head, line.split(","))) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == "aiserve"}

    def wait_state(self, server, state, timeout=30):
        """The time HAProxy's check state of server is seen to be state:
        "UP" (up, no check failing) or "DOWN" (marked down, with or without
        a good check since)."""
        last = [None]

        def reached():
            rows = self.servers()
            last[0] = rows and rows[server]["status"]
            ok = last[0] == "UP" if state == "UP" else bool(last[0]) and last[0].startswith("DOWN")
            return time.monotonic() if ok else None

        return wait_until(reached, timeout, lambda: "%s to be %s in haproxy (last: %r):\n%s"
                          % (server, state, last[0], self.output()), interval=0.01)


@pytest.fixture
def haproxy_factory(tmp_path):
    started = []

    def make(backends):
        h = HAProxy(tmp_path, backends)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


class Load:
    """CLIENTS threads POSTing /predict through HAProxy, each a distinct text
    (computed, not cached), paced a little, until stop(). Every request is
    recorded as (start, end, outcome): 200, or the status and body of another
    answer, or the exception's name."""

    def __init__(self, url, key):
        self.url = url
        self.key = key
        self.records = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, i):
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                r = session.post(self.url, json={"text": "steady traffic, client %d request %d" % (i, n)},
                                 headers={"X-API-Key": self.key}, timeout=30)
                outcome = 200 if r.status_code == 200 else "%d %s" % (r.status_code, r.text[:300])
            except requests.RequestException as e:
                outcome = type(e).__name__
            with self._lock:
                self.records.append((start, time.monotonic(), outcome))
            n += 1
            self._stop.wait(0.01)

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def answered(self, more, what):
        """Returns once `more` requests have finished since the call."""
        with self._lock:
            n = len(self.records) + more
        wait_until(lambda: len(self.records) >= n, 60, "%d more answers to the load (%s)" % (more, what))

    def started_between(self, t0, t1):
        with self._lock:
            return [r for r in self.records if t0 <= r[0] < t1]


def predictions(s):
    """How many /predict requests the instance has answered (its access log)."""
    return sum(1 for e in s.logs("request") if e.get("path") == "/predict")


def served_by(servers, response):
    """The index in servers of the instance that logged the response's request id."""
    rid = response.headers["X-Request-ID"]

    def find():
        for i, s in enumerate(servers):
            if any(e.get("request_id") == rid for e in s.logs("request")):
                return i
        return None

    return wait_until(find, 10, "an instance to log request %s" % rid)


def test_two_replicas_behind_haproxy(server_factory, redis_factory, haproxy_factory, tmp_path):
    redis = redis_factory()
    keys = tmp_path / "keys.json"
    load_key = create(keys, "load", "predict,batch", "--tier", "load")
    tight_key = create(keys, "tight", "predict", "--tier", "tight")
    args = ("--redis-url", redis.url(), "--keys-file", str(keys), "--rate-limit",
            "--rate-limit-tiers", "load=1000000/100000,tight=%d/%d" % (RATE, BURST),
            "--batch-store", "redis", "--batch-lease", "2s", "--max-body-size", "8MiB",
            "--drain-timeout", "5s", "--trusted-proxies", "127.0.0.1")
    ports = [free_port(), free_port()]
    a = server_factory(*args, "--port", str(ports[0]))
    b = server_factory(*args, "--port", str(ports[1]), clean_exit=False)   # killed below
    lb = haproxy_factory(ports)
    lb.check()
    lb.start()
    lb.wait_state("aiserve-1", "UP")
    lb.wait_state("aiserve-2", "UP")
    r = requests.get("http://127.0.0.1:%d/metrics" % lb.stats_port, timeout=10)
    assert r.status_code == 200 and 'haproxy_server_check_status{proxy="aiserve",server="aiserve-1"' in r.text
    load_auth = {"X-API-Key": load_key}

    # A cached answer of one instance is a hit when HAProxy sends the same
    # request to the other (round robin: consecutive requests alternate).
    first = lb.post("/predict", json={"text": "a film worth seeing twice"}, headers=load_auth)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS", first.text
    first_by = served_by([a, b], first)
    for _ in range(4):
        again = lb.post("/predict", json={"text": "a film worth seeing twice"}, headers=load_auth)
        if served_by([a, b], again) != first_by:
            break
    else:
        pytest.fail("haproxy sent 5 requests in a row to the same instance")
    assert again.status_code == 200 and again.headers["X-Cache"] == "HIT" and again.content == first.content

    # One bucket for the tight key, whichever instance answers: 3 clients
    # send 3 * BURST requests at once; at most the burst plus the refill of
    # the elapsed time is admitted, the rest is 429.
    statuses = []
    lock = threading.Lock()

    def burst(i):
        for j in range(BURST):
            resp = lb.post("/predict", json={"text": "tight %d %d" % (i, j)}, headers={"X-API-Key": tight_key})
            with lock:
                statuses.append(resp.status_code)

    t0 = time.monotonic()
    threads = [threading.Thread(target=burst, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    admitted = statuses.count(200)
    assert len(statuses) == 3 * BURST and set(statuses) <= {200, 429}, statuses
    assert BURST <= admitted <= BURST + int(elapsed * RATE / 60) + 1, (admitted, elapsed)

    def admitted_by(s):
        return sum(1 for e in s.logs("request") if e.get("key") == "tight" and e.get("status") == 200)

    wait_until(lambda: admitted_by(a) + admitted_by(b) == admitted, 10, "the admitted requests in the logs")
    assert admitted_by(a) > 0 and admitted_by(b) > 0, "haproxy did not spread the key over both"
    print("\nrate limit: %d of %d admitted in %.2f s (tier %d/min, burst %d), A %d + B %d"
          % (admitted, len(statuses), elapsed, RATE, BURST, admitted_by(a), admitted_by(b)))

    load = Load(lb.url("/predict"), load_key).start()
    try:
        load.answered(40, "before the SIGTERM")

        # Phase 1: SIGTERM to A (it drains), restarted at once on its port.
        p1 = time.monotonic()
        assert a.stop(signal.SIGTERM) == 0, a.output()
        drained = a.logs("shutting_down")[0]["in_flight"]
        a = server_factory(*args, "--port", str(ports[0]))
        lb.wait_state("aiserve-1", "UP")
        wait_until(lambda: predictions(a) >= 10, 30, "the new A to answer requests")
        load.answered(40, "after A is back")
        p2 = time.monotonic()

        # Phase 2: a batch job in progress, then kill -9 to B; B is restarted
        # once HAProxy has marked it down and requests have gone on without it.
        texts = dev_sentences(BATCH_INPUTS)
        r = lb.post("/v1/batch", json={"inputs": texts}, headers=load_auth)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        wait_until(lambda: lb.get("/v1/batch/" + job, headers=load_auth).json()["progress"]["done"] >= 64, 60,
                   "the job to be under way")
        done_at_kill = lb.get("/v1/batch/" + job, headers=load_auth).json()["progress"]["done"]
        t_kill = time.monotonic()
        b.kill()
        t_down = lb.wait_state("aiserve-2", "DOWN")
        load.answered(40, "while B is down")
        b = server_factory(*args, "--port", str(ports[1]))
        t_up = lb.wait_state("aiserve-2", "UP")
        wait_until(lambda: predictions(b) >= 10, 30, "the new B to answer requests")
        load.answered(40, "after B is back")
        end = time.monotonic()
    finally:
        load.stop()

    phase1 = load.started_between(p1, p2)
    phase2 = load.started_between(p2, end)
    failed1 = [rec for rec in phase1 if rec[2] != 200]
    failed2 = [rec for rec in phase2 if rec[2] != 200]
    after_down = load.started_between(t_down, end)
    print("phase 1 (SIGTERM to A, %d in flight, restarted): %d requests, %d failed"
          % (drained, len(phase1), len(failed1)))
    print("phase 2 (kill -9 to B, restarted): %d requests, %d failed; %d after B was marked down"
          % (len(phase2), len(failed2), len(after_down)))
    print("kill -9: B marked down after %.2f s, up again after %.2f s (recovery)"
          % (t_down - t_kill, t_up - t_kill))
    print("haproxy retried %d requests on the other instance" % lb.retried())
    assert not failed1, failed1
    # a failure is a request that was in flight when B died (at most one per client)
    assert all(start < t_kill < finish for start, finish, _ in failed2), (t_kill, failed2)
    assert len(failed2) <= CLIENTS
    assert after_down and all(rec[2] == 200 for rec in after_down)

    # The batch job submitted before the kill completes with every input.
    status = wait_status(lb, job, timeout=120, headers=load_auth)
    assert status["progress"] == {"done": BATCH_INPUTS, "total": BATCH_INPUTS}
    r = lb.get("/v1/batch/%s/results?limit=10000" % job, headers=load_auth)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(BATCH_INPUTS))
    assert all(d["result"]["label"] in ("NEGATIVE", "POSITIVE") for d in data)
    expired = sum(sample(s.metrics(), "aiserve_batch_lease_expiries_total") for s in (a, b))
    print("batch: %d inputs, %d done at the kill, completed (%d chunk leases expired and taken over)"
          % (BATCH_INPUTS, done_at_kill, expired))
