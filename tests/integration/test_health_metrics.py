"""test_health_metrics.py - health checks through a model's life, and /metrics
after known traffic.

The loading state is held open with a FIFO in place of config.json: the loader
blocks opening it until the test writes the real config through it.
"""

import errno
import os
import shutil
import signal
import subprocess

import pytest
import requests

from harness import (SENTIMENT, assert_error, make_repo, parse_prometheus, sample, series, wait_until)


def test_health_endpoints_when_ready(server):
    r = server.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True
    assert body["ready"] is True
    r = server.get("/health/live")
    assert r.status_code == 200
    r = server.get("/health/ready")
    assert r.status_code == 200
    for path in ("/health", "/health/live", "/health/ready"):
        assert server.get(path).headers["Content-Type"].startswith("application/json")


def _open_fifo_writer(path, timeout=20):
    """The write end of a FIFO, once its reader has opened it (the reader then
    waits for the bytes)."""
    def opened():
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:          # ENXIO: no reader yet
                raise
            return None

    fd = wait_until(opened, timeout, "the loader to open %s" % path)
    os.set_blocking(fd, True)
    return fd


@pytest.fixture
def slow_repo(tmp_path):
    """A repo whose only model blocks in loading: loading() returns once the
    loader is inside the load (it opened config.json and waits for its
    bytes); release() lets the load finish."""
    d = tmp_path / "slow"
    d.mkdir()
    for f in os.listdir(SENTIMENT):
        if f != "config.json":
            os.symlink(os.path.join(SENTIMENT, f), d / f)
    fifo = d / "config.json"
    os.mkfifo(fifo)
    config = open(os.path.join(SENTIMENT, "config.json"), "rb").read()
    writer, released = [], []

    def loading():
        if not writer:
            writer.append(_open_fifo_writer(str(fifo)))

    def release():
        if not released:
            released.append(True)
            loading()
            try:
                os.write(writer[0], config)
            finally:
                os.close(writer[0])

    repo = make_repo(tmp_path, sentiment=str(d))
    yield repo, loading, release
    if not released:            # never leave the loader blocked
        try:
            release()
        except (OSError, AssertionError):       # it is gone, or never opened the file
            pass


def test_loading_state_then_ready(server_factory, slow_repo):
    repo, loading, release = slow_repo
    s = server_factory(repo=repo, wait="live")
    loading()            # the loader is inside the load, held there until release()
    r = s.get("/health/ready")
    assert r.status_code == 503, r.text
    r = s.get("/health")
    assert r.status_code == 503, r.text
    assert r.json()["model_loaded"] is False
    assert r.json()["ready"] is False
    assert s.get("/health/live").status_code == 200
    assert_error(s.predict("hello"), 503)
    assert s.get("/v1/models/sentiment").json()["versions"][0]["state"] == "loading"
    m = s.metrics()
    assert sample(m, "aiserve_model_state", model="sentiment", version="1", state="loading") == 1
    assert sample(m, "aiserve_model_state", model="sentiment", version="1", state="available") == 0

    release()
    s.wait_for("/health/ready", 200, timeout=30)
    assert s.get("/health").status_code == 200
    assert s.predict("hello").status_code == 200
    m = s.metrics()
    assert sample(m, "aiserve_model_state", model="sentiment", version="1", state="available") == 1
    assert sample(m, "aiserve_model_state", model="sentiment", version="1", state="loading") == 0
    names = [e["msg"] for e in s.logs()]
    assert names.index("listening") < names.index("model_loaded") < names.index("ready")


def test_sigterm_while_loading_exits_promptly(server_factory, slow_repo):
    """A model load is not a request in flight: SIGTERM during a (stuck) load
    stops the server within the drain timeout, and a second signal at once."""
    repo, loading, release = slow_repo
    s = server_factory("--drain-timeout", "1s", repo=repo, wait="live", clean_exit=False)
    loading()
    s.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(5)
    except subprocess.TimeoutExpired:
        s.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(3)
            second = "a second SIGTERM stopped it"
        except subprocess.TimeoutExpired:
            second = "a second SIGTERM did not stop it either"
        release()
        rc = s.stop()
        pytest.fail("server still running 5 s after SIGTERM while a model was loading "
                    "(--drain-timeout 1s); %s; exit %r after the load finished" % (second, rc))
    assert rc == 0, s.output()


def test_failed_model_not_ready_but_others_serve(server_factory, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(SENTIMENT):
        if f != "config.json":
            os.symlink(os.path.join(SENTIMENT, f), bad / f)
    (bad / "config.json").write_text('{"architectures": ["Nonsense"], "garbage": ')
    repo = make_repo(tmp_path, sentiment=SENTIMENT, broken=str(bad))
    s = server_factory(repo=repo, wait="live")
    failed = s.wait_log("model_load_failed", model="broken")
    assert failed["level"] in ("error", "warning")
    s.wait_log("model_loaded", model="sentiment")
    assert s.get("/health/ready").status_code == 503
    # the model that loaded is served
    r = s.predict("fine")
    assert r.status_code == 200, r.text
    assert_error(s.post("/v1/models/broken/predict", json={"text": "x"}), 503)
    states = {m["name"]: m["versions"][0]["state"] for m in s.get("/v1/models").json()["data"]}
    assert states == {"sentiment": "available", "broken": "failed"}
    m = s.metrics()
    assert sample(m, "aiserve_model_state", model="broken", version="1", state="failed") == 1


def test_metrics_after_known_traffic(server_factory):
    s = server_factory()
    sess = requests.Session()
    u = s.url
    sent = {}
    # the readiness polls of the harness are in the counts already: start from them
    base = {(l["endpoint"], l["status"]): v for l, v in series(s.metrics(), "prediction_requests_total")
            if l["endpoint"] != "/metrics"}

    def count(endpoint, status, r):
        assert r.status_code == status, (endpoint, r.status_code, r.text)
        sent[(endpoint, str(status))] = sent.get((endpoint, str(status)), 0) + 1

    texts = 0
    for i in range(7):
        count("/predict", 200, sess.post(u("/predict"), json={"text": "good %d" % i}))
        texts += 1
    for i in range(3):
        count("/predict", 200, sess.post(u("/predict"), json={"texts": ["bad", "great", "fine %d" % i]}))
        texts += 3
    for i in range(2):
        count("/v1/models/{name}/predict", 200,
              sess.post(u("/v1/models/sentiment/predict"), json={"text": "ok %d" % i}))
        texts += 1
    count("/predict", 422, sess.post(u("/predict"), json={"text": 5}))
    count("/predict", 422, sess.post(u("/predict"), json={"text": ""}))
    count("/predict", 400, sess.post(u("/predict"), data=b"{nope"))
    count("/predict", 405, sess.get(u("/predict")))
    count("/v1/models/{name}/predict", 404, sess.post(u("/v1/models/zzz/predict"), json={"text": "x"}))
    count("/v1/models", 200, sess.get(u("/v1/models")))
    count("/v1/models/{name}", 200, sess.get(u("/v1/models/sentiment")))
    count("/v1/models/{name}", 404, sess.get(u("/v1/models/unknown-model")))
    count("/health", 200, sess.get(u("/health")))
    count("/health/live", 200, sess.get(u("/health/live")))
    count("/health/ready", 200, sess.get(u("/health/ready")))
    for p in ("/secret-path-1", "/wp-admin/x.php", "/secret-path-2?q=1", "/v2/zzz"):
        count("other", 404, sess.get(u(p)))

    r = sess.get(u("/metrics"))
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "version=0.0.4" in r.headers["Content-Type"]
    m = parse_prometheus(r.text)

    got = {(l["endpoint"], l["status"]): v - base.get((l["endpoint"], l["status"]), 0)
           for l, v in series(m, "prediction_requests_total") if l["endpoint"] != "/metrics"}
    got = {k: v for k, v in got.items() if v}
    assert got == {k: float(v) for k, v in sent.items()}
    # unknown paths are one label value, never themselves
    assert "secret-path" not in r.text and "wp-admin" not in r.text and "zzz" not in r.text
    for labels, _ in series(m, "prediction_requests_total"):
        assert set(labels) == {"endpoint", "status"}

    # predictions per label add up to the texts sent, and the batcher saw them all
    preds = series(m, "aiserve_predictions_total")
    assert sum(v for _, v in preds) == texts
    assert {l["label"] for l, _ in preds} <= {"NEGATIVE", "POSITIVE"}
    assert all((l["model"], l["version"]) == ("sentiment", "1") for l, _ in preds)
    assert sample(m, "aiserve_batch_size_sum", model="sentiment", version="1") == texts
    assert sample(m, "aiserve_tokens_total", model="sentiment", version="1") >= 3 * texts
    assert sample(m, "aiserve_queue_depth", model="sentiment", version="1") == 0
    assert sample(m, "aiserve_model_state", model="sentiment", version="1", state="available") == 1

    # latency histogram: at least every successful /predict was observed, consistently
    ok_predict = sent[("/predict", "200")]
    lat_count = sample(m, "prediction_latency_seconds_count", endpoint="/predict")
    assert ok_predict <= lat_count <= sum(v for (e, _), v in sent.items() if e == "/predict")
    buckets = sorted(((float(l["le"]), v) for l, v in series(m, "prediction_latency_seconds_bucket")
                      if l["endpoint"] == "/predict"), key=lambda x: x[0])
    assert buckets[-1][0] == float("inf") and buckets[-1][1] == lat_count
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))

    # model errors are failures of the model (shed, deadline, inference), not of the input
    assert sum(v for _, v in series(m, "model_errors_total")) == 0

    # standard metrics exist
    assert sample(m, "process_resident_memory_bytes") > 0
    assert sample(m, "process_open_fds") > 0
    assert sample(m, "process_start_time_seconds") > 1.6e9
    assert ("process_cpu_seconds_total", frozenset()) in m
    info = series(m, "aiserve_build_info")
    assert len(info) == 1 and info[0][1] == 1 and "version" in info[0][0]

    # the scrape itself is counted (by the next scrape)
    m2 = s.metrics()
    assert sample(m2, "prediction_requests_total", endpoint="/metrics", status="200") >= 1


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")
def test_promtool_check_metrics(server_factory):
    s = server_factory()
    s.predict("something")
    s.post("/predict", json={"text": 1})
    s.get("/nope")
    body = s.get("/metrics").content
    proc = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=body,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
