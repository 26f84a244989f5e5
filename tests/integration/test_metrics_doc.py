"""test_metrics_doc.py - docs/metrics.md lists exactly the metric families the
server exports. Two servers are started with every feature that registers
metrics: one in memory (API keys, rate limits, the cache, batch jobs, two
versions of a classifier and an embedding model, an LLM gateway) that is sent traffic on
every endpoint (predictions of every kind, a cache hit, a 429, auth and
other errors, every admin endpoint, a shadow and a cascade, batch jobs run
to completion), and one on a real redis-server. The families of their
/metrics scrapes together must equal the names in the tables of
docs/metrics.md, no more and no fewer.
"""

import os
import re

import requests

from harness import FIXTURES, ROOT, SENTIMENT, assert_error, wait_until

from test_auth import create
from test_batch import wait_status

DOC = os.path.join(ROOT, "docs", "metrics.md")
EMBED = os.path.join(FIXTURES, "bert-base-embed")
NAME = re.compile(r"^`([a-zA-Z_:][a-zA-Z0-9_:]*)`$")
TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
TEXTS = ["a wonderful , moving film .", "dull and far too long ."]


def documented_families():
    """The names in the first column of every table of docs/metrics.md whose
    header's first cell is `metric`; each such cell must hold one name."""
    names = []
    table = None       # in a table: whether it is a metric table; None outside one
    for n, line in enumerate(open(DOC, encoding="utf-8"), 1):
        if not line.startswith("|"):
            table = None
            continue
        first = line.split("|")[1].strip()
        if table is None:          # a table's header
            table = first == "metric"
            continue
        if not table or set(first) <= set("-: "):
            continue               # another kind of table, or the separator line
        m = NAME.match(first)
        assert m, "docs/metrics.md:%d: the metric cell %r is not one `name`" % (n, first)
        names.append(m.group(1))
    dups = sorted({x for x in names if names.count(x) > 1})
    assert not dups, "documented twice in docs/metrics.md: %s" % dups
    return set(names)


def exported_families(text):
    """Family names of a Prometheus text scrape: the # TYPE lines, with any
    sample line that belongs to no typed family counted as its own family
    (a histogram's _bucket, _sum and _count lines belong to it)."""
    types = {}
    samples = set()
    for line in text.splitlines():
        m = TYPE_LINE.match(line)
        if m:
            types[m.group(1)] = m.group(2)
        elif line and not line.startswith("#"):
            m = SAMPLE_NAME.match(line)
            assert m, "unparsable metrics line: %r" % line
            samples.add(m.group(1))
    families = set(types)
    for s in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", s)
        if s not in types and types.get(base) not in ("histogram", "summary"):
            families.add(s)
    return families


def scrape(s):
    r = s.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def make_repo(tmp_path):
    """sentiment/1 and /2 (the bundled classifier twice, for a shadow and a
    cascade) and minilm/1 (the embedding fixture)."""
    repo = tmp_path / "repo"
    for name, version, src in (("sentiment", 1, SENTIMENT), ("sentiment", 2, SENTIMENT), ("minilm", 1, EMBED)):
        (repo / name).mkdir(parents=True, exist_ok=True)
        os.symlink(src, repo / name / str(version))
    return repo


def run_batch_jobs(s, h):
    """A /v1/batch job and a seed /batch_predict task, each polled to completion."""
    r = s.post("/v1/batch", json={"model": "sentiment", "inputs": TEXTS}, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert wait_status(s, job, headers=h)["progress"] == {"done": 2, "total": 2}
    r = s.get("/v1/batch/%s/results" % job, headers=h)
    assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
    r = s.post("/batch_predict", json={"texts": TEXTS}, headers=h)
    assert r.ok, r.text
    path = "/batch_result/" + r.json()["task_id"]

    def finished():
        body = s.get(path, headers=h).json()
        return body if body["status"] != "pending" else None
    assert wait_until(finished, 60, path + " to finish")["status"] == "completed"


def admin(s, method, path, h, body=None):
    """One request to an admin endpoint of the model sentiment, answered 200 or 202."""
    r = requests.request(method, s.url("/admin/models/sentiment" + path), json=body, headers=h, timeout=30)
    assert r.status_code in (200, 202), (method, path, r.status_code, r.text)
    return r


def traffic_on_every_endpoint(s, h, tight):
    """Requests on every route (h: a key with every scope), each answered as
    documented."""
    for path in ("/health", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready",
                 "/v1/models", "/v1/models/sentiment", "/v2", "/v2/models/sentiment"):
        r = s.get(path, headers=h)
        assert r.status_code == 200, (path, r.text)
    # predictions of every kind, and a cache hit
    first = s.predict("a cached film", headers=h)
    again = s.predict("a cached film", headers=h)
    assert first.status_code == again.status_code == 200
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    for path, body in (("/predict", {"texts": TEXTS}),
                       ("/v1/models/sentiment/predict", {"text": TEXTS[0]}),
                       ("/v1/models/sentiment/versions/1/predict", {"texts": TEXTS}),
                       ("/v2/models/sentiment/infer",
                        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}),
                       ("/v1/embeddings", {"model": "minilm", "input": TEXTS})):
        r = s.post(path, json=body, headers=h)
        assert r.status_code == 200, (path, r.text)
    # every admin endpoint; a shadow and a cascade each serve a prediction
    admin(s, "PUT", "/traffic", h, {"1": 50, "2": 50})
    admin(s, "GET", "/traffic", h)
    admin(s, "PUT", "/traffic", h, {})
    admin(s, "PUT", "/aliases/production", h, {"version": 1})
    admin(s, "GET", "/aliases", h)
    admin(s, "DELETE", "/aliases/production", h)
    admin(s, "PUT", "/shadow", h, {"version": 2, "percent": 100})
    admin(s, "GET", "/shadow", h)
    assert s.predict("shadowed", headers=dict(h, **{"X-Model-Version": "1"})).status_code == 200
    admin(s, "PUT", "/shadow", h, {})
    admin(s, "PUT", "/cascade", h, {"first": 1, "then": 2, "threshold": 1.0})
    admin(s, "GET", "/cascade", h)
    assert s.predict("cascaded", headers=h).status_code == 200
    admin(s, "PUT", "/cascade", h, {})
    admin(s, "POST", "/versions/1/load", h)
    run_batch_jobs(s, h)
    # errors: no key, an unknown model, bad JSON, an unknown path, a rate limit
    assert_error(s.predict("no key"), 401, "missing_api_key")
    assert_error(s.post("/v1/models/nope/predict", json={"text": "x"}, headers=h), 404, "model_not_found")
    assert_error(s.post("/predict", data=b"{", headers=h), 400, "invalid_json")
    assert_error(s.get("/no/such/route", headers=h), 404, "not_found")
    assert s.predict("one token", headers={"X-API-Key": tight}).status_code == 200
    assert_error(s.predict("none left", headers={"X-API-Key": tight}), 429, "rate_limited")


def test_docs_list_every_exported_metric(server_factory, redis_factory, tmp_path):
    keys = tmp_path / "keys.json"
    key = create(keys, "all", "predict,embed,batch,admin")
    tight = create(keys, "tight", "predict", "--tier", "tight")
    # An LLM gateway: its families appear as soon as one is configured.
    llm = tmp_path / "llm.yaml"
    llm.write_text("providers:\n  - {name: up, base_url: http://127.0.0.1:9/v1}\n"
                   "models:\n  - {name: m, provider: up}\n")
    mem = server_factory("--keys-file", str(keys), "--rate-limit",
                         "--rate-limit-tiers", "default=6000/6000,anonymous=6000/6000,tight=1/1",
                         "--version-policy", "all", "--gateway-config", str(llm), repo=make_repo(tmp_path))
    traffic_on_every_endpoint(mem, {"X-API-Key": key}, tight)
    redis = redis_factory()
    shared = server_factory("--redis-url", redis.url(), "--rate-limit")
    assert [shared.predict("in redis").headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]

    exported = exported_families(scrape(mem)) | exported_families(scrape(shared))
    documented = documented_families()
    missing = sorted(exported - documented)
    extra = sorted(documented - exported)
    assert not missing and not extra, (
        "docs/metrics.md and /metrics disagree.\n"
        "exported but not documented (add a table row): %s\n"
        "documented but not exported by either server: %s" % (missing, extra))
