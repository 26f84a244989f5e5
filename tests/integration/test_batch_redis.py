"""test_batch_redis.py - batch jobs in the queue shared through a real
redis-server (batch.store auto: redis.url is set): two instances, a job
submitted on one is run by both and read on either, with results equal to
/predict's; the seed's endpoints across instances; a cancel on one stops the
other's work; kill -9 of the only instance mid-job, then a new one finishes
the job from what was stored, its chunk in flight handed over when its lease
expires, nothing lost or stored twice; Redis down (503 for batch, /predict
unaffected) and back; listing (GET /v1/batch): both instances list the same
jobs of a key in the same order, a page on one and the next on the other,
and a job retention deleted leaves the list and Redis.
"""

import requests

from harness import assert_error, sample, wait_until
from test_batch import (assert_finished_equal_singles, dev_sentences, list_all, make_key, wait_seed_result,
                        wait_status)


def redis_server(server_factory, redis, *args, **kw):
    return server_factory("--redis-url", redis.url(), "--no-cache", "--max-body-size", "8MiB",
                          "--batch-lease", "2s", *args, **kw)


def test_two_instances_share_one_queue(server_factory, redis_factory):
    redis = redis_factory()
    a = redis_server(server_factory, redis)
    b = redis_server(server_factory, redis)
    n = 8000                                               # long enough (a second or more) for both workers to join
    texts = dev_sentences(n)
    r = a.post("/v1/batch", json={"inputs": texts})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": n}
    done = wait_status(b, job["id"], timeout=300)          # read on the other instance
    assert done["model_version"] == "1"
    # both instances computed part of it, and together every input once
    pa = sample(a.metrics(), "aiserve_batch_inputs_processed_total")
    pb = sample(b.metrics(), "aiserve_batch_inputs_processed_total")
    assert pa > 0 and pb > 0 and pa + pb == n, (pa, pb)
    assert_finished_equal_singles(a, job["id"], texts)
    r = b.get("/v1/batch/%s/results" % job["id"], headers={"Accept": "application/jsonl"})
    assert r.status_code == 200 and len(r.text.splitlines()) == n

    # the seed's endpoints, submitted on one, answered on the other
    r = b.post("/batch_predict", json=["a gorgeous , witty film", "tedious beyond belief"])
    assert r.status_code == 200 and set(r.json()) == {"task_id", "status"}
    task = r.json()["task_id"]
    body = wait_seed_result(a, task)
    assert body["status"] == "completed"
    assert [x["label"] for x in body["results"]] == [b.predict(t).json()["label"] for t in
                                                     ["a gorgeous , witty film", "tedious beyond belief"]]

    # a cancel on one instance stops the other's work too
    big = a.post("/v1/batch", json={"inputs": dev_sentences(20000)}).json()["id"]
    r = requests.delete(b.url("/v1/batch/" + big), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    at_cancel = r.json()["progress"]
    # Both workers are done with it once the queue keeps nothing of it and no
    # chunk is leased (a claim pops and leases in one script): from then on no
    # work on it can start or end.
    wait_until(lambda: redis.command("LLEN", "aiserve:batch:queue") == 0
               and redis.command("ZCARD", "aiserve:batch:leases") == 0, 60,
               "the cancelled job's chunks to leave the queue and the leases")
    later = a.get("/v1/batch/" + big).json()
    # a chunk in flight at the cancel is not stored (its commit sees the job ended)
    assert later["status"] == "cancelled" and later["progress"] == at_cancel
    assert later["progress"]["done"] < 20000
    assert_error(requests.delete(a.url("/v1/batch/" + big), timeout=10), 409, "job_finished")


def test_kill_9_mid_job_then_a_new_instance_finishes(server_factory, redis_factory):
    redis = redis_factory()
    n = 6000
    texts = dev_sentences(n)
    s = redis_server(server_factory, redis, clean_exit=False)
    job_id = s.post("/v1/batch", json={"inputs": texts}).json()["id"]
    wait_until(lambda: s.get("/v1/batch/" + job_id).json()["progress"]["done"] >= 64, 120,
               "64 inputs of the job done", interval=0.01)
    s.kill()                                               # SIGKILL, mid-job
    stored = int(redis.command("HGET", "aiserve:batch:job:" + job_id, "done"))
    held = redis.command("ZCARD", "aiserve:batch:leases")  # the chunk it was computing, if any
    assert 0 < stored < n and held in (0, 1), (stored, held)
    s2 = redis_server(server_factory, redis)
    assert_finished_equal_singles(s2, job_id, texts)
    m = s2.metrics()
    # exactly what was not stored was computed, and the dead lease was handed over
    assert sample(m, "aiserve_batch_inputs_processed_total") == n - stored
    assert sample(m, "aiserve_batch_lease_expiries_total") == held
    if held:
        assert s2.logs("batch_leases_expired")


def test_redis_down_refuses_batch_not_predictions(server_factory, redis_factory):
    redis = redis_factory()
    s = redis_server(server_factory, redis)
    job_id = s.post("/v1/batch", json={"inputs": ["fine"]}).json()["id"]
    wait_status(s, job_id)
    health = s.get("/health").json()
    assert health["status"] == "healthy" and health["dependencies"]["batch_queue"] == {"status": "up"}
    redis.kill()
    r = s.post("/v1/batch", json={"inputs": ["while it is down"]})
    assert_error(r, 503, "job_queue_unavailable")
    assert r.headers["Retry-After"] == "1"
    assert_error(s.get("/v1/batch/" + job_id), 503, "job_queue_unavailable")
    assert s.predict("online traffic goes on").status_code == 200
    health = s.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["dependencies"]["batch_queue"]["status"] == "down"
    assert "error" in health.json()["dependencies"]["batch_queue"]
    redis.start()                                          # back, empty (no persistence)

    def accepted():
        r = s.post("/v1/batch", json={"inputs": ["back again"]})
        assert r.status_code in (202, 503), (r.status_code, r.text)
        return r if r.status_code == 202 else None

    r = wait_until(accepted, 30, "a job accepted once Redis is back")
    assert wait_status(s, r.json()["id"])["progress"] == {"done": 1, "total": 1}
    assert s.logs("batch_queue_unavailable")
    assert s.get("/health").json()["dependencies"]["batch_queue"] == {"status": "up"}


def test_two_instances_list_the_same_jobs(server_factory, redis_factory, tmp_path):
    redis = redis_factory()
    keys = tmp_path / "keys.json"
    alice, bob = make_key(keys, "alice", "batch"), make_key(keys, "bob", "batch")
    args = ("--keys-file", str(keys), "--batch-max-jobs-per-key", "100")
    a = redis_server(server_factory, redis, *args)
    b = redis_server(server_factory, redis, *args)
    # Alice's jobs, submitted on either instance in turn (a seed one among
    # them); a large one cancelled on the other; one of Bob's.
    big = a.post("/v1/batch", json={"inputs": dev_sentences(20000)}, headers=alice).json()["id"]
    assert requests.delete(b.url("/v1/batch/" + big), headers=alice, timeout=10).json()["status"] == "cancelled"
    ids = [big]
    for i in range(6):
        s = (a, b)[i % 2]
        if i == 3:
            ids.append(s.post("/batch_predict", json=["seed job"], headers=alice).json()["task_id"])
        else:
            ids.append(s.post("/v1/batch", json={"inputs": ["job %d" % i]}, headers=alice).json()["id"])
    bobs = b.post("/v1/batch", json={"inputs": ["bob's"]}, headers=bob).json()["id"]
    for job_id in ids[1:]:
        wait_status(a, job_id, headers=alice)
    newest = ids[::-1]

    lists = [[j for p in list_all(s, 3, headers=alice) for j in p["data"]] for s in (a, b)]
    assert lists[0] == lists[1] and [j["id"] for j in lists[0]] == newest
    assert lists[0][-1]["status"] == "cancelled"
    for job in lists[0]:
        assert job == b.get("/v1/batch/" + job["id"], headers=alice).json()
    # A page on one instance, the next on the other.
    first = a.get("/v1/batch?limit=4", headers=alice).json()
    second = b.get("/v1/batch", params={"limit": 4, "after": first["last_id"]}, headers=alice).json()
    assert [j["id"] for j in first["data"] + second["data"]] == newest
    assert first["has_more"] is True and second["has_more"] is False
    assert [j["id"] for j in a.get("/v1/batch", headers=bob).json()["data"]] == [bobs]
    assert_error(b.get("/v1/batch", params={"after": ids[1]}, headers=bob), 422, "invalid_request")
    assert_error(a.get("/v1/batch?limit=0", headers=alice), 422, "invalid_request")


def test_retention_empties_the_lists(server_factory, redis_factory):
    redis = redis_factory()
    s = redis_server(server_factory, redis, "--batch-retention", "1s")
    job_id = s.post("/v1/batch", json={"inputs": ["short lived"]}).json()["id"]
    wait_status(s, job_id)
    assert [j["id"] for j in s.get("/v1/batch").json()["data"]] == [job_id]
    assert redis.command("ZCARD", "aiserve:batch:jobs:") == 1
    # Redis keeps nothing of it in the owners' lists: the sweep, not a
    # listing, removes it (nothing lists until then).
    wait_until(lambda: redis.command("EXISTS", "aiserve:batch:jobs:", "aiserve:batch:expiring") == 0, 30,
               "the expired job to leave the owners' lists")
    assert redis.command("EXISTS", "aiserve:batch:job:" + job_id) == 0
    assert s.get("/v1/batch").json()["data"] == []
