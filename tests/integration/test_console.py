"""test_console.py - the operator console (GET /ui) in a real browser
(Debian's chromium through playwright-core) against the real binary, with
API keys, two versions of a model, a model whose label is HTML, batch jobs
and an LLM gateway on the fake upstream: the page loads with no console
error; its charts draw traffic sent after it opened; a split set on the page
is what GET /admin/models/{m}/traffic answers; a job cancelled from the page
is cancelled and another one's results download whole; a label named
<img src=x onerror=alert(1)> shows as text and runs nothing; without a key,
or with a key that lacks admin, the page says so and changes nothing. A
screenshot of each view is kept as a test artefact (docs/console.md shows
them). The page's own files are checked like /docs's."""

import json
import os
import re
import shutil

import pytest

from fake_llm import FakeLLM
from harness import FIXTURES, SENTIMENT, artifacts_dir, create_key

EVIL = "<img src=x onerror=alert(1)>"



def evil_model(tmp_path):
    """A three-label fixture classifier whose middle label is HTML."""
    d = tmp_path / "evil-model"
    shutil.copytree(os.path.join(FIXTURES, "distilbert-relu-3label"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"]["1"] = EVIL
    cfg["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def console_server(server_factory, tmp_path):
    fake = FakeLLM()
    fake.script("up-flaky", [{"status": 500}])
    fake.script("up-small", [{"text": "hi there"}])
    gw = {
        "providers": [{"name": "fake", "kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_LLM_KEY"}],
        "models": [
            {"name": "small", "provider": "fake", "upstream_model": "up-small", "input_price": "0.5",
             "output_price": "1.5"},
            {"name": "flaky", "provider": "fake", "upstream_model": "up-flaky", "input_price": "2",
             "output_price": "4", "fallbacks": ["small"]},
        ],
        "retry": {"attempts": "1"},
        "breaker": {"failures": "2", "failure_ratio": "0"},
        "budgets": {"keys": {"operator": {"daily_usd": "1"}}},
    }
    (tmp_path / "gateway.yaml").write_text(json.dumps(gw))
    repo = tmp_path / "repo"
    for name, version, src in (("sentiment", 1, SENTIMENT), ("sentiment", 2, SENTIMENT),
                               ("evil", 1, evil_model(tmp_path))):
        (repo / name).mkdir(parents=True, exist_ok=True)
        os.symlink(src, repo / name / str(version))
    keys = tmp_path / "keys.json"
    admin = create_key(keys, "operator", "admin,predict,batch,chat")
    reader = create_key(keys, "reader", "predict")
    s = server_factory("--keys-file", str(keys), "--gateway-config", str(tmp_path / "gateway.yaml"),
                       "--max-body-size", "16MiB", "--no-rate-limit", "--version-policy", "all", repo=repo,
                       env={"FAKE_LLM_KEY": "sk-fake"})
    yield s, admin, reader
    fake.stop()


def test_console_in_a_browser(console_server, browser, tmp_path):
    s, admin, reader = console_server
    big = tmp_path / "big.txt"
    big.write_text("".join("review number %d: a long, slow and rather tiresome film\n" % i for i in range(60000)))
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("great", "awful", "fine")))
    shots = artifacts_dir()
    r = browser("console_page.js", s.url(""), shots, admin, reader, big, small)

    # Loaded from / with the strict policy, and nothing went wrong but the
    # refusals this test asked for (the browser logs each as an error).
    assert r["url"].endswith("/ui")
    assert r["csp"].startswith("default-src 'none'; script-src 'self';") and "unsafe" not in r["csp"]
    unexpected = [p for p in r["problems"] if not p.startswith(
        "console: Failed to load resource: the server responded with a status of 40")]
    assert unexpected == [], r["problems"]
    assert r["dialogs"] == []

    # Without a key, and with a key that lacks admin: said, nothing changed.
    assert "missing_api_key" in r["noKey"] or "API key" in r["noKey"]
    assert "lacks the scope 'admin'" in r["readKeyNotice"], r["readKeyNotice"]
    assert r["trafficAfterRefusal"]["traffic"] == {}
    assert "lacks the scope 'chat'" in r["readKeyBudgets"], r["readKeyBudgets"]

    # Charts drew the traffic sent after the page opened.
    assert int(r["linesAfter"] or 0) >= 1
    # Drift: both versions of the model chosen, with its own labels.
    assert "POSITIVE" in r["driftSummary"] and "onerror" not in r["driftSummary"], r["driftSummary"]
    assert r["driftRows"] >= 2
    # The split set on the page is the server's.
    assert s.get("/admin/models/sentiment/traffic", headers={"X-API-Key": admin}).json()["traffic"] == \
        {"1": 30, "2": 70}
    # The HTML label is text everywhere, and ran nothing.
    assert EVIL in r["evilLabelsCell"]
    assert r["imagesOnModels"] == 0 and r["imagesOnTry"] == 0
    assert r["evilTry"][0] == "first text" and r["evilTry"][1] in ("negative", EVIL, "positive")
    assert EVIL in r["evilTry"][2]
    # Try it: the pinned version answered, then the cache did.
    assert r["tryVersion"] == "version 2" and "HIT" in r["tryCache"]
    assert r["tryCurl"].startswith("curl -s '%s/v2/models/sentiment/versions/2/infer'" % s.url(""))
    # Batch jobs: the big one cancelled (as the API says), the small one whole.
    job = s.get("/v1/batch/" + r["bigJob"], headers={"X-API-Key": admin}).json()
    assert job["status"] == "cancelled", (job, r["cancelNotice"])
    assert [d["index"] for d in r["downloaded"]] == [0, 1, 2]
    assert r["downloaded"][0]["result"]["label"] == "POSITIVE"
    # The gateway: spend per key and model, the flaky model's breaker.
    assert any("operator" in row and "small" in row for row in r["gatewayCosts"]), r["gatewayCosts"]
    assert any(row.startswith("flaky") for row in r["gatewayBreakers"]), r["gatewayBreakers"]
    # Budgets left: the admin key sees the operator's daily budget, a few
    # chat completions spent of it.
    daily = [m for m in (re.match(r"operator\$([\d.]+) / \$1\.00\$([\d.]+)", row) for row in r["gatewayBudgets"]) if m]
    assert daily and 0.99 < float(daily[0].group(2)) <= 1, r["gatewayBudgets"]
    for view in ("live", "models", "drift", "try", "jobs", "gateway"):
        assert os.path.getsize(os.path.join(shots, "console-%s.png" % view)) > 10000, view


def test_console_files(server_factory):
    s = server_factory()
    r = s.get("/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/ui"
    page = s.get("/ui")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>" not in page.text and "style=" not in page.text
    sizes = {}
    for f in ("/ui/console.js", "/ui/console.css", "/ui/favicon.svg"):
        plain = s.get(f, headers={"Accept-Encoding": "identity"})
        gz = s.get(f)  # requests takes gzip and inflates it
        assert plain.status_code == 200 and gz.content == plain.content, f
        sizes[f] = len(plain.content)
    assert "MIT" in s.get("/ui/uPlot.LICENSE.txt").text
    # Small: the script with its chart library, and the style sheet.
    assert sizes["/ui/console.js"] < 150000 and sizes["/ui/console.css"] < 20000, sizes
    assert s.get("/ui/nope.js").status_code == 404


def test_history_endpoint(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    key = create_key(keys, "reader", "predict")
    s = server_factory("--keys-file", str(keys))
    assert s.get("/v1/metrics/history").status_code == 401
    h = {"X-API-Key": key}
    for i in range(5):
        assert s.post("/predict", json={"text": "fine %d" % i}, headers=h).status_code == 200

    def sampled():
        doc = s.get("/v1/metrics/history", headers=h).json()
        texts = [x for x in doc["series"] if x["name"] == "aiserve_predictions_total"]
        return doc if texts and sum(v or 0 for x in texts for v in x["rate"]) > 0 else None

    from harness import wait_until
    doc = wait_until(sampled, 10, "the predictions to be sampled")
    assert doc["interval_ms"] == 1000 and doc["seconds"] == 900
    assert all(len(x.get("rate", x.get("value", x.get("count")))) == len(doc["t"]) for x in doc["series"])
    rates = [x for x in doc["series"] if x["name"] == "aiserve_predictions_total"]
    assert abs(sum(v or 0 for x in rates for v in x["rate"]) * 1.0 - 5) < 1.5  # per second, 1 s apart
    # since: only what came after.
    last = doc["t"][-1]
    later = wait_until(lambda: s.get("/v1/metrics/history?since=%d" % last, headers=h).json()["t"] or None, 10,
                       "a later sample")
    assert all(t > last for t in later)
    only = s.get("/v1/metrics/history?families=aiserve_queue_depth,prediction_latency_seconds", headers=h).json()
    assert {x["name"] for x in only["series"]} <= {"aiserve_queue_depth", "prediction_latency_seconds"}
    for bad in ("since=-1", "since=x", "families=a%20b", "families=" + "a" * 2000):
        r = s.get("/v1/metrics/history?" + bad, headers=h)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", bad
