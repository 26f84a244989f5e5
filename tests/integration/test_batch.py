"""test_batch.py - batch jobs with the real binary, in SQLite: a 500-input job
whose results equal /predict's answers in order (v1 pages, JSON Lines, and the
seed's endpoints), kill -9 mid-job and a restart (nothing lost or doubled),
cancel, retention, invalid jobs (never stored), owners and scopes, the
per-key limit, listing a key's jobs (GET /v1/batch: newest first, pages,
never another key's), and a database that is corrupt or already in use.
"""

import json
import os
import subprocess

import requests

from harness import BIN, MODELS, assert_error, create_key, sample, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV = "/work/shared/data/sst2/dev.tsv" if os.path.exists("/work/shared/data/sst2/dev.tsv") else \
    os.path.join(ROOT, "..", "shared", "data", "sst2", "dev.tsv")


def make_key(keys_file, name, scopes):
    """Creates an API key in keys_file; the headers that send it."""
    return {"X-API-Key": create_key(keys_file, name, scopes)}


def list_all(s, page=None, **kw):
    """Every job GET /v1/batch lists, following after/has_more (page: the
    limit, None for the default); the pages' bodies."""
    pages, after = [], None
    while True:
        params = {k: v for k, v in (("limit", page), ("after", after)) if v is not None}
        r = s.get("/v1/batch", params=params, **kw)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list"
        ids = [j["id"] for j in body["data"]]
        assert (body["first_id"], body["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None))
        pages.append(body)
        if not body["has_more"]:
            return pages
        after = body["last_id"]


def dev_sentences(n):
    with open(DEV, encoding="utf-8") as f:
        next(f)
        rows = [line.rsplit("\t", 1)[0].strip() for line in f if line.strip()]
    return [rows[i % len(rows)] for i in range(n)]


def wait_status(s, job_id, want=("completed",), timeout=120, **kw):
    """The job's status body once its status is one of want."""
    last = [None]

    def reached():
        r = s.get("/v1/batch/" + job_id, **kw)
        assert r.status_code == 200, r.text
        last[0] = r.json()
        return last[0] if last[0]["status"] in want else None

    return wait_until(reached, timeout, lambda: "job %s to be %r (last: %r)" % (job_id, want, last[0]))


def wait_seed_result(s, task, timeout=60, **kw):
    """GET /batch_result/{task} once the task is no longer pending."""
    def finished():
        body = s.get("/batch_result/" + task, **kw).json()
        return body if body["status"] != "pending" else None

    return wait_until(finished, timeout, "task %s to finish" % task)


def all_results(s, job_id, page=200, **kw):
    out, offset = [], 0
    while True:
        r = s.get("/v1/batch/%s/results?offset=%d&limit=%d" % (job_id, offset, page), **kw)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["data"]
        offset += len(body["data"])
        if not body["has_more"]:
            return out, body


def assert_finished_equal_singles(s, job_id, texts, timeout=300):
    """Waits for the job to complete; its results, read in pages, are one per
    input in order and equal /predict's answer for each. Returns the results."""
    n = len(texts)
    body = wait_status(s, job_id, timeout=timeout)
    assert body["progress"] == {"done": n, "total": n}
    results, _ = all_results(s, job_id, page=5000)
    assert [x["index"] for x in results] == list(range(n))
    singles = {t: s.predict(t).json() for t in set(texts)}
    assert all(results[i]["result"] == singles[t] for i, t in enumerate(texts))
    return results


def test_500_inputs_equal_single_predictions(server_factory):
    s = server_factory("--no-cache")
    texts = dev_sentences(500)
    r = s.post("/v1/batch", json={"model": "sentiment", "inputs": texts})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["object"] == "batch" and job["status"] == "queued" and job["progress"] == {"done": 0, "total": 500}
    assert r.headers["Location"] == "/v1/batch/" + job["id"]
    done = wait_status(s, job["id"])
    assert done["progress"] == {"done": 500, "total": 500} and done["model_version"] == "1"
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] and done["error"] is None
    results, last = all_results(s, job["id"])
    assert [x["index"] for x in results] == list(range(500))
    assert last["total"] == 500 and last["status"] == "completed"
    singles = {}
    for t in set(texts):
        singles[t] = s.predict(t).json()
    for i, t in enumerate(texts):
        assert results[i]["result"] == singles[t], (i, t)
    # JSON Lines: every result, one per line, the same objects
    r = s.get("/v1/batch/%s/results" % job["id"], headers={"Accept": "application/jsonl"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/jsonl")
    lines = [json.loads(l) for l in r.text.splitlines()]
    assert lines == results
    m = s.metrics()
    assert sample(m, "aiserve_batch_inputs_processed_total") == 500
    assert sample(m, "aiserve_batch_jobs_finished_total", state="completed") == 1
    assert sample(m, "aiserve_batch_job_duration_seconds_count") == 1
    assert s.logs("batch_job_completed")[0]["id"] == job["id"]


def test_seed_endpoints_and_json_lines_upload(server_factory):
    s = server_factory()
    texts = ["a wonderful , moving film .", "dull and far too long .", "it 's fine ."]
    for body in (texts, {"texts": texts}):
        r = s.post("/batch_predict", json=body)
        assert r.status_code == 200, r.text                 # as the seed service answered
        task = r.json()["task_id"]
        assert task.startswith("batch_") and len(task) == 30
        res = wait_seed_result(s, task)
        assert res["status"] == "completed"
        want = s.post("/predict", json={"texts": texts}).json()["predictions"]
        assert res["results"] == want
    assert_error(s.get("/batch_result/batch_000000000000000000000000"), 404, "job_not_found")
    assert_error(s.get("/batch_result/../../etc/passwd"), 404)
    # JSON Lines upload: strings or {"text": ...}; blank lines skipped
    body = '"a wonderful , moving film ."\n{"text": "dull and far too long ."}\n\n'
    r = s.post("/v1/batch", data=body.encode(), headers={"Content-Type": "application/jsonl"})
    assert r.status_code == 202, r.text
    job = wait_status(s, r.json()["id"])
    assert job["progress"]["total"] == 2
    bad = '"ok"\n{"text": \n'
    r = s.post("/v1/batch", data=bad.encode(), headers={"Content-Type": "application/x-ndjson"})
    err = assert_error(r, 400, "invalid_json")
    assert "line 2" in err["message"]


def test_invalid_jobs_are_never_stored(server_factory):
    s = server_factory("--batch-max-inputs", "3")
    cases = [
        ({"inputs": []}, 422, "invalid_request"),
        ({"inputs": ["ok", 7]}, 422, "invalid_text"),
        ({"inputs": ["ok", "   "]}, 422, "empty_text"),
        ({"inputs": ["a", "b", "c", "d"]}, 422, "too_many_inputs"),
        ({"texts": ["a"]}, 422, "invalid_request"),
        ({"model": "nope", "inputs": ["a"]}, 404, "model_not_found"),
        ({"model": 5, "inputs": ["a"]}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        assert_error(s.post("/v1/batch", json=body), status, code)
    assert_error(s.post("/v1/batch", data=b"{nope"), 400, "invalid_json")
    assert_error(s.post("/batch_predict", json={"text": "a"}), 422, "invalid_request")
    assert_error(s.post("/batch_predict", json=[]), 422, "invalid_request")
    assert_error(requests.put(s.url("/v1/batch"), timeout=10), 405, "method_not_allowed")
    assert_error(s.get("/v1/batch/batch_x/results?limit=0"), 422, "invalid_request")
    assert_error(s.get("/v1/batch/batch_x/results?offset=-1"), 422, "invalid_request")
    # A valid job after them: the gauges are counted from the database, so
    # once they count this one, they count any invalid job stored before it.
    r = s.post("/v1/batch", json={"inputs": ["the only job"]})
    assert r.status_code == 202, r.text
    wait_status(s, r.json()["id"])
    assert [j["id"] for j in s.get("/v1/batch").json()["data"]] == [r.json()["id"]]

    def counted():
        m = s.metrics()
        return m if sample(m, "aiserve_batch_jobs", state="completed") >= 1 else None

    m = wait_until(counted, 30, "the aiserve_batch_jobs gauges to count the completed job")
    held = {state: sample(m, "aiserve_batch_jobs", state=state)
            for state in ("queued", "running", "completed", "failed", "cancelled")}
    assert held == {"queued": 0, "running": 0, "completed": 1, "failed": 0, "cancelled": 0}, held


def test_kill_9_mid_job_then_restart_loses_nothing(server_factory, tmp_path):
    data = str(tmp_path / "jobs")
    n = 6000
    texts = dev_sentences(n)
    args = ("--batch-data-dir", data, "--max-body-size", "8MiB", "--no-cache")
    s = server_factory(*args, clean_exit=False)
    r = s.post("/v1/batch", json={"inputs": texts})
    assert r.status_code == 202
    job_id = r.json()["id"]

    def progressed():
        done = s.get("/v1/batch/" + job_id).json()["progress"]["done"]
        return done if done >= 64 else None

    done = wait_until(progressed, 120, "64 inputs of the job done", interval=0.01)
    s.kill()                                            # SIGKILL, mid-job
    assert 0 < done < n, done
    s2 = server_factory(*args)
    assert_finished_equal_singles(s2, job_id, texts)
    # what the killed process had committed was not computed again
    assert sample(s2.metrics(), "aiserve_batch_inputs_processed_total") <= n - done + 64


def test_cancel_stops_work(server_factory):
    s = server_factory("--max-body-size", "8MiB")
    r = s.post("/v1/batch", json={"inputs": dev_sentences(20000)})
    job_id = r.json()["id"]
    r = requests.delete(s.url("/v1/batch/" + job_id), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    done = r.json()["progress"]["done"]
    # One worker runs the jobs in order: once a job submitted after the cancel
    # has completed, the chunk that was in flight at the cancel is over.
    wait_status(s, s.post("/v1/batch", json={"inputs": ["after the cancel"]}).json()["id"])
    body = s.get("/v1/batch/" + job_id).json()
    assert body["status"] == "cancelled" and body["progress"]["done"] - done <= 32 and body["finished_at"]
    assert body["progress"]["done"] < 20000
    # results computed before the cancel stay readable; the rest are null
    res = s.get("/v1/batch/%s/results?offset=19990&limit=10" % job_id).json()
    assert all(x["result"] is None for x in res["data"])
    assert_error(requests.delete(s.url("/v1/batch/" + job_id), timeout=10), 409, "job_finished")
    assert sample(s.metrics(), "aiserve_batch_jobs_finished_total", state="cancelled") == 1


def test_retention_purges(server_factory):
    s = server_factory("--batch-retention", "1s")
    job_id = s.post("/v1/batch", json={"inputs": ["short lived"]}).json()["id"]
    wait_status(s, job_id)
    wait_until(lambda: s.get("/v1/batch/" + job_id).status_code == 404, 30, "the job to be purged")
    assert_error(s.get("/v1/batch/%s/results" % job_id), 404, "job_not_found")
    assert s.get("/v1/batch").json() == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                          "has_more": False}
    assert s.logs("batch_job_purged")


def test_owners_scopes_and_limits(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    alice, bob = make_key(keys, "alice", "batch"), make_key(keys, "bob", "batch,predict")
    predict_only = make_key(keys, "carol", "predict")
    s = server_factory("--keys-file", str(keys), "--batch-max-jobs-per-key", "1", "--max-body-size", "8MiB")
    assert_error(s.post("/v1/batch", json={"inputs": ["x"]}), 401, "missing_api_key")
    assert_error(s.post("/v1/batch", json={"inputs": ["x"]}, headers=predict_only), 403, "insufficient_scope")
    r = s.post("/v1/batch", json={"inputs": dev_sentences(20000)}, headers=alice)
    assert r.status_code == 202
    job_id = r.json()["id"]
    # one unfinished job per key: alice's second waits; bob has his own count
    assert_error(s.post("/v1/batch", json={"inputs": ["x"]}, headers=alice), 429, "too_many_jobs")
    # another key never sees alice's job or its results
    assert_error(s.get("/v1/batch/" + job_id, headers=bob), 404, "job_not_found")
    assert_error(s.get("/v1/batch/%s/results" % job_id, headers=bob), 404, "job_not_found")
    assert_error(requests.delete(s.url("/v1/batch/" + job_id), headers=bob, timeout=10), 404, "job_not_found")
    assert_error(s.get("/batch_result/" + job_id, headers=bob), 404, "job_not_found")
    assert s.get("/v1/batch/" + job_id, headers=alice).status_code == 200
    assert requests.delete(s.url("/v1/batch/" + job_id), headers=alice, timeout=10).status_code == 200
    assert s.post("/v1/batch", json={"inputs": ["x"]}, headers=alice).status_code == 202


def test_list_newest_first_in_pages_per_key(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    alice, bob = make_key(keys, "alice", "batch"), make_key(keys, "bob", "batch")
    admin, predict_only = make_key(keys, "root", "admin"), make_key(keys, "carol", "predict")
    s = server_factory("--keys-file", str(keys), "--batch-max-jobs-per-key", "100", "--max-body-size", "8MiB")
    # Alice: a large job cancelled at once, then 22 small ones, /batch_predict's
    # (the seed's kind) among them; Bob: one.
    big = s.post("/v1/batch", json={"inputs": dev_sentences(20000)}, headers=alice).json()["id"]
    assert requests.delete(s.url("/v1/batch/" + big), headers=alice, timeout=10).status_code == 200
    ids = [big]
    for i in range(22):
        if i % 5 == 2:
            r = s.post("/batch_predict", json=["seed job %d" % i], headers=alice)
            assert r.status_code == 200, r.text
            ids.append(r.json()["task_id"])
        else:
            r = s.post("/v1/batch", json={"inputs": ["job %d" % i]}, headers=alice)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    bobs = s.post("/v1/batch", json={"inputs": ["bob's"]}, headers=bob).json()["id"]
    for job_id in ids[1:]:
        wait_status(s, job_id, headers=alice)
    newest = ids[::-1]

    # Newest first, 20 by default; each entry is what GET /v1/batch/{id} says.
    r = s.get("/v1/batch", headers=alice)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert [j["id"] for j in body["data"]] == newest[:20] and body["has_more"] is True
    assert (body["first_id"], body["last_id"]) == (newest[0], newest[19])
    for job in body["data"]:
        assert job == s.get("/v1/batch/" + job["id"], headers=alice).json()
    # Pages of 7 (the last one short), of 23 (all, has_more false), of 100.
    for page in (7, 23, 100):
        pages = list_all(s, page, headers=alice)
        assert [j["id"] for p in pages for j in p["data"]] == newest
        assert [len(p["data"]) for p in pages] == [min(page, 23 - k) for k in range(0, 23, page)]
    cancelled = list_all(s, headers=alice)[-1]["data"][-1]
    assert cancelled["id"] == big and cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert cancelled["progress"]["done"] < 20000
    after_last = s.get("/v1/batch", params={"after": big}, headers=alice).json()
    assert after_last == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    # Never another key's jobs, nor a page after one of them.
    assert [j["id"] for j in s.get("/v1/batch", headers=bob).json()["data"]] == [bobs]
    err = assert_error(s.get("/v1/batch", params={"after": ids[5]}, headers=bob), 422, "invalid_request")
    assert "after" in err["message"]
    err = assert_error(s.get("/v1/batch", params={"after": bobs}, headers=alice), 422, "invalid_request")
    assert "after" in err["message"]
    # Scope batch: an admin key is no owner of every job.
    assert_error(s.get("/v1/batch"), 401, "missing_api_key")
    assert_error(s.get("/v1/batch", headers=predict_only), 403, "insufficient_scope")
    assert_error(s.get("/v1/batch", headers=admin), 403, "insufficient_scope")

    # Bad pages: 422 naming the parameter; nothing else changes.
    for query in ("limit=0", "limit=101", "limit=-1", "limit=ten", "limit=", "limit=1.5"):
        err = assert_error(s.get("/v1/batch?" + query, headers=alice), 422, "invalid_request")
        assert "limit" in err["message"], (query, err)
    for after in ("batch_000000000000000000000000", "../etc/passwd", "BATCH_X", "x" * 40):
        err = assert_error(s.get("/v1/batch", params={"after": after}, headers=alice), 422, "invalid_request")
        assert "after" in err["message"], (after, err)
    assert_error(s.get("/v1/batch?after", headers=alice), 422, "invalid_request")
    # HEAD, as everywhere GET is.
    r = requests.head(s.url("/v1/batch"), headers=alice, timeout=10)
    assert r.status_code == 200 and r.content == b""


def test_list_without_keys(server_factory):
    s = server_factory()
    assert s.get("/v1/batch").json()["data"] == []
    a = s.post("/v1/batch", json={"inputs": ["first"]}).json()["id"]
    b = s.post("/batch_predict", json=["second"]).json()["task_id"]
    body = s.get("/v1/batch?limit=1&after=").json()                     # an empty after: the first page
    assert [j["id"] for j in body["data"]] == [b] and body["has_more"] is True
    body = s.get("/v1/batch?limit=1&after=" + b).json()
    assert [j["id"] for j in body["data"]] == [a] and body["has_more"] is False


def test_database_corrupt_or_in_use(server_factory, tmp_path):
    data = tmp_path / "jobs"
    s = server_factory("--batch-data-dir", str(data))
    # a second process on the same directory is refused at start
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    cmd = [BIN, "serve", "--port", "0", "--model-repository", MODELS, "--keys-file", "/nonexistent/k.json",
           "--batch-data-dir", str(data)]
    p = subprocess.run(cmd, capture_output=True, timeout=60, env=env)
    assert p.returncode == 2 and b"in use by another aiserve process" in p.stdout + p.stderr
    assert s.alive()
    s.stop()
    # a file that is not a database: a clear error, and the file is left as it was
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "jobs.db").write_bytes(b"this is not SQLite " * 100)
    cmd[-1] = str(bad)
    p = subprocess.run(cmd, capture_output=True, timeout=60, env=env)
    assert p.returncode == 2
    assert b"jobs.db" in p.stdout + p.stderr
    assert (bad / "jobs.db").read_bytes() == b"this is not SQLite " * 100
