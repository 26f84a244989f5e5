"""test_versions.py - which versions a model serves (models.version_policy,
as TF Serving's): latest (with fallback past a broken newest version),
latest:N, all and specific, each checked in /v1/models and by pinning
versions through the path and X-Model-Version; a policy that does not parse
stops the start. Traffic splits (PUT /admin/models/{name}/traffic): 2,000
users on 80/20 land within 4 points of 80 %, each keeps their version across
repeats and a restart, requests without a user are split at random, bad
splits are refused and leave the old one, and the admin scope is needed."""

import os
import subprocess

import pytest
import requests

from harness import BIN, SENTIMENT, assert_error, wait_until


def repo_with_versions(tmp_path):
    """sentiment/1 and /2 (the bundled model), /3 broken (no weights)."""
    repo = tmp_path / "repo"
    (repo / "sentiment").mkdir(parents=True)
    os.symlink(SENTIMENT, repo / "sentiment" / "1")
    os.symlink(SENTIMENT, repo / "sentiment" / "2")
    bad = repo / "sentiment" / "3"
    bad.mkdir()
    (bad / "config.json").write_text(open(os.path.join(SENTIMENT, "config.json")).read())
    return repo


def states(s):
    model = s.get("/v1/models/sentiment").json()
    return {v["version"]: v["state"] for v in model["versions"]}


def served_version(s, **headers):
    r = s.predict("a fine film", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == r.headers["X-Model-Version"]
    return r.json()["model_version"]


@pytest.mark.parametrize("policy, want", [
    (None, {"3": "failed", "2": "available"}),
    ("latest:2", {"3": "failed", "2": "available"}),
    ("latest:3", {"3": "failed", "2": "available", "1": "available"}),
    ("all", {"3": "failed", "2": "available", "1": "available"}),
    ("specific:1", {"1": "available"}),
    ("specific:1,3", {"3": "failed", "1": "available"}),
])
def test_policies(server_factory, tmp_path, policy, want):
    args = ("--version-policy", policy) if policy else ()
    s = server_factory(*args, repo=repo_with_versions(tmp_path))
    assert states(s) == want
    available = sorted(v for v, st in want.items() if st == "available")
    assert served_version(s) == available[-1]            # no version asked: the newest loaded
    for v in available:                                  # each loaded version by path and by header
        r = s.post("/v1/models/sentiment/versions/%s/predict" % v, json={"text": "a fine film"})
        assert r.status_code == 200 and r.json()["model_version"] == v
        assert served_version(s, **{"X-Model-Version": v}) == v
    for v in set(["1", "2"]) - set(available):           # in the repository, not loaded by the policy
        assert_error(s.predict("x", headers={"X-Model-Version": v}), 404, "version_not_found")


@pytest.mark.parametrize("policy", ["latest:0", "latest:x", "specific:", "specific:1,", "specific:a", "newest"])
def test_bad_policy_stops_the_start(tmp_path, policy):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "serve", "--port", "0", "--model-repository", str(repo_with_versions(tmp_path)),
                        "--keys-file", "/nonexistent/k.json", "--batch-data-dir", str(tmp_path / "jobs"),
                        "--version-policy", policy], capture_output=True, timeout=60, env=env)
    assert p.returncode == 2
    assert b"version policy" in p.stdout + p.stderr


def put_split(s, split, **kw):
    return requests.put(s.url("/admin/models/sentiment/traffic"), json=split, timeout=30, **kw)


def versions_of_users(s, users):
    out = {}
    for u in users:
        r = s.predict("a fine film", headers={"X-User-ID": u})
        assert r.status_code == 200
        out[u] = r.headers["X-Model-Version"]
    return out


def test_traffic_split_sticky_users(server_factory, tmp_path):
    repo = repo_with_versions(tmp_path)
    s = server_factory("--version-policy", "specific:1,2", repo=repo)
    assert s.get("/admin/models/sentiment/traffic").json() == {"model": "sentiment", "traffic": {}}
    r = put_split(s, {"1": 80, "2": 20})
    assert r.status_code == 200 and r.json()["traffic"] == {"1": 80, "2": 20}
    assert s.get("/v1/models/sentiment").json()["traffic"] == {"1": 80, "2": 20}
    users = ["user-%d" % i for i in range(2000)]
    first = versions_of_users(s, users)
    share = sum(v == "1" for v in first.values()) / len(users)
    assert abs(share - 0.80) <= 0.04, share
    assert versions_of_users(s, users[:300]) == {u: first[u] for u in users[:300]}     # repeats
    # requests without a user: weighted random
    anon = [served_version(s) for _ in range(300)]
    assert 0.65 <= anon.count("1") / 300 <= 0.95
    # a pinned version wins over the split
    assert served_version(s, **{"X-User-ID": users[0], "X-Model-Version": "2"}) == "2"
    s.stop()
    # after a restart (the split set again), every user lands where they did
    s2 = server_factory("--version-policy", "specific:1,2", repo=repo)
    assert put_split(s2, {"2": 20, "1": 80}).status_code == 200
    assert versions_of_users(s2, users[:500]) == {u: first[u] for u in users[:500]}


@pytest.mark.parametrize("split, words", [
    ({"1": 80, "2": 10}, "sum to 90"),
    ({"1": 80, "5": 20}, "no version 5"),
    ({"1": 150, "2": -50}, "0 to 100"),
    ({"v1": 100}, "version numbers"),
    ({"1": 80.5, "2": 19.5}, "version numbers"),
    ([80, 20], "version numbers"),
])
def test_bad_splits_leave_the_old_one(server_factory, tmp_path, split, words):
    s = server_factory("--version-policy", "all", repo=repo_with_versions(tmp_path))
    assert put_split(s, {"1": 50, "2": 50}).status_code == 200
    r = put_split(s, split)
    err = assert_error(r, 422, "invalid_request")
    assert words in err["message"], err["message"]
    assert s.get("/admin/models/sentiment/traffic").json()["traffic"] == {"1": 50, "2": 50}
    assert_error(requests.put(s.url("/admin/models/nope/traffic"), json={"1": 100}, timeout=30), 404,
                 "model_not_found")
    assert put_split(s, {}).json()["traffic"] == {}                     # cleared


def test_admin_needs_the_admin_scope(server_factory, tmp_path):
    keys = tmp_path / "keys.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}

    def key(name, scopes):
        p = subprocess.run([BIN, "keys", "create", "--keys-file", str(keys), "--name", name, "--scopes", scopes],
                           capture_output=True, timeout=30, env=env)
        assert p.returncode == 0
        return {"X-API-Key": p.stdout.decode().strip()}

    admin, user = key("ops", "admin"), key("app", "predict")
    s = server_factory("--keys-file", str(keys), "--version-policy", "all", repo=repo_with_versions(tmp_path))
    assert_error(put_split(s, {"1": 100}), 401, "missing_api_key")
    assert_error(put_split(s, {"1": 100}, headers=user), 403, "insufficient_scope")
    assert put_split(s, {"1": 100}, headers=admin).status_code == 200
    assert served_version(s, **user) == "1"


def test_aliases(server_factory, tmp_path):
    s = server_factory("--version-policy", "all", repo=repo_with_versions(tmp_path))
    url = s.url("/admin/models/sentiment/aliases")
    assert s.get("/admin/models/sentiment/aliases").json() == {"model": "sentiment", "aliases": {}}
    r = requests.put(url + "/production", json={"version": 1}, timeout=30)
    assert r.status_code == 200 and r.json()["aliases"] == {"production": "1"}
    assert requests.put(url + "/staging", json={"version": "2"}, timeout=30).status_code == 200
    assert s.get("/v1/models/sentiment").json()["aliases"] == {"production": "1", "staging": "2"}
    # an alias works wherever a version does
    r = s.post("/v1/models/sentiment/versions/production/predict", json={"text": "a fine film"})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert served_version(s, **{"X-Model-Version": "staging"}) == "2"
    # moving an alias moves its traffic at once
    assert requests.put(url + "/production", json={"version": 2}, timeout=30).status_code == 200
    assert served_version(s, **{"X-Model-Version": "production"}) == "2"
    assert_error(s.predict("x", headers={"X-Model-Version": "canary"}), 404, "version_not_found")
    assert_error(s.post("/v1/models/sentiment/versions/canary/predict", json={"text": "x"}), 404,
                 "version_not_found")
    assert_error(s.predict("x", headers={"X-Model-Version": "bad alias!"}), 422, "invalid_request")
    # bad requests change nothing
    assert_error(requests.put(url + "/canary", json={"version": 9}, timeout=30), 422, "invalid_request")
    assert_error(requests.put(url + "/canary", json={"v": 1}, timeout=30), 422, "invalid_request")
    assert_error(requests.put(url + "/9lives", json={"version": 1}, timeout=30), 422, "invalid_request")
    assert_error(requests.put(s.url("/admin/models/nope/aliases/x"), json={"version": 1}, timeout=30), 404,
                 "model_not_found")
    assert_error(requests.delete(url + "/canary", timeout=30), 404, "version_not_found")
    assert requests.delete(url + "/staging", timeout=30).json()["aliases"] == {"production": "2"}
    assert_error(s.predict("x", headers={"X-Model-Version": "staging"}), 404, "version_not_found")


def test_new_version_under_load_then_broken_one(server_factory, tmp_path):
    """A version directory that appears while requests flow is loaded, warmed
    up and then serves; the old version is unloaded once idle; not one
    request fails. A broken version that appears later is reported and the
    serving version stays."""
    import threading
    repo = tmp_path / "repo"
    (repo / "sentiment").mkdir(parents=True)
    os.symlink(SENTIMENT, repo / "sentiment" / "1")
    s = server_factory("--poll-interval", "200ms", "--no-cache", repo=repo)
    stop = threading.Event()
    seen, statuses = [], []

    def client(k):
        i = 0
        while not stop.is_set():
            r = requests.post(s.url("/predict"), json={"text": "steady %d %d" % (k, i)}, timeout=30)
            statuses.append(r.status_code)
            seen.append(r.headers.get("X-Model-Version"))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 20, 30, "20 answers from version 1")    # requests flow
        os.symlink(SENTIMENT, repo / "sentiment" / "2")
        wait_until(lambda: "2" in seen[-20:], 60, "version 2 to serve")
        wait_until(lambda: seen[-20:] == ["2"] * 20, 30, "the last 20 answers to be version 2's")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert seen[0] == "1" and seen[-1] == "2"
    wait_until(lambda: states(s) == {"2": "available"}, 30, lambda: "only version 2 (%r)" % states(s))
    s.wait_log("model_unloaded", model="sentiment", version=1)
    # a broken newer version: reported, never served
    bad = repo / "sentiment" / "3"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    wait_until(lambda: states(s).get("3") == "failed", 30, lambda: "version 3 failed (%r)" % states(s))
    versions = {v["version"]: v for v in s.get("/v1/models/sentiment").json()["versions"]}
    assert versions["3"]["error"]
    assert served_version(s) == "2"


def test_shadow_traffic(server_factory, tmp_path):
    """Every request also goes to the shadow version; the client only ever
    sees the primary's answer; agreement is counted."""
    from harness import series
    s = server_factory("--version-policy", "all", "--no-cache", repo=repo_with_versions(tmp_path))
    assert put_split(s, {"1": 100}).status_code == 200                 # primary: version 1
    url = s.url("/admin/models/sentiment/shadow")
    assert requests.get(url, timeout=30).json() == {"model": "sentiment", "shadow": {}}
    r = requests.put(url, json={"version": 2, "percent": 100}, timeout=30)
    assert r.status_code == 200 and r.json()["shadow"] == {"version": "2", "percent": 100}
    assert s.get("/v1/models/sentiment").json()["shadow"] == {"version": "2", "percent": 100}
    texts = ["shadowed %d" % i for i in range(40)]
    for t in texts:
        r = s.predict(t)
        assert r.status_code == 200 and r.json()["model_version"] == "1"   # never the shadow's answer
    r = s.post("/predict", json={"texts": texts[:5]})
    assert r.json()["model_version"] == "1"

    def shadowed():
        """{result: texts} of the shadow version so far."""
        return {labels["result"]: v for labels, v in series(s.metrics(), "aiserve_shadow_predictions_total")
                if labels["model"] == "sentiment" and labels["version"] == "2"}

    wait_until(lambda: sum(shadowed().values()) >= 45, 60, lambda: "45 shadowed texts (%r)" % shadowed())
    got = shadowed()
    assert got.get("agree") == 45 and sum(got.values()) == 45, got    # the same weights: every text agrees
    # pinned requests to the shadow's own version are not shadowed again
    served_version(s, **{"X-Model-Version": "2"})
    for bad in ({"version": 2, "percent": 0}, {"version": 9, "percent": 10}, {"version": 2, "percent": 150},
                {"percent": 10}):
        assert_error(requests.put(url, json=bad, timeout=30), 422, "invalid_request")
    assert requests.put(url, json={}, timeout=30).json()["shadow"] == {}


def test_cascade_escalates_exactly_the_unsure_texts(server_factory, tmp_path):
    from harness import sample
    s = server_factory("--version-policy", "all", repo=repo_with_versions(tmp_path))
    texts = ["a wonderful , moving film .", "dull and far too long .", "it 's fine .", "meh",
             "not bad at all", "the best film of the year", "i hated every minute", "a quiet , odd little film"]
    first = {t: s.predict(t, headers={"X-Model-Version": "1"}).json()["confidence"] for t in texts}
    ranked = sorted(first.values())
    threshold = (ranked[len(texts) // 2 - 1] + ranked[len(texts) // 2]) / 2   # half the texts are below it
    unsure = {t for t, c in first.items() if c < threshold}
    assert 0 < len(unsure) < len(texts)
    url = s.url("/admin/models/sentiment/cascade")
    r = requests.put(url, json={"first": 1, "then": 2, "threshold": threshold}, timeout=30)
    assert r.status_code == 200
    assert r.json()["cascade"] == {"first": "1", "then": "2", "threshold": pytest.approx(threshold, rel=1e-8)}
    assert s.get("/v1/models/sentiment").json()["versions"]  # still listed
    body = s.post("/predict", json={"texts": texts}).json()
    assert body["model_version"] == "1"
    for t, p in zip(texts, body["predictions"]):
        assert p["model_version"] == ("2" if t in unsure else "1"), (t, first[t], threshold)
    for t in texts:                                            # single texts: the version that answered
        assert s.predict(t).json()["model_version"] == ("2" if t in unsure else "1")
    m = s.metrics()
    assert sample(m, "aiserve_cascade_texts_total", model="sentiment", result="escalated") == 2 * len(unsure)
    assert sample(m, "aiserve_cascade_texts_total", model="sentiment", result="first") == \
        2 * (len(texts) - len(unsure))
    # a pinned version skips the cascade
    r = s.predict(texts[0], headers={"X-Model-Version": "2"})
    assert r.json()["model_version"] == "2" and r.headers["X-Model-Version"] == "2"
    for bad in ({"first": 1, "then": 1, "threshold": 0.5}, {"first": 1, "then": 9, "threshold": 0.5},
                {"first": 1, "then": 2, "threshold": 1.5}, {"first": 1, "then": 2}):
        assert_error(requests.put(url, json=bad, timeout=30), 422, "invalid_request")
    assert requests.put(url, json={}, timeout=30).json()["cascade"] == {}
    assert s.post("/predict", json={"texts": texts}).json()["predictions"][0].get("model_version") is None


def test_metadata_has_the_weights_sha256(server):
    import hashlib
    want = hashlib.sha256(open(os.path.join(SENTIMENT, "model.safetensors"), "rb").read()).hexdigest()

    def hashed():
        v = server.get("/v1/models/sentiment").json()["versions"][0]
        return v if v["sha256"] else None

    v = wait_until(hashed, 30, "the weights' sha256 in the metadata")
    assert v["sha256"] == want
    assert {"architecture", "labels", "max_length", "parameters", "dtype", "load_seconds"} <= set(v)


def test_traffic_split_from_configuration(server_factory, tmp_path):
    s = server_factory("--version-policy", "all", "--traffic", "sentiment@1=80,sentiment@2=20",
                       repo=repo_with_versions(tmp_path))
    assert s.get("/admin/models/sentiment/traffic").json()["traffic"] == {"1": 80, "2": 20}
    users = ["user-%d" % i for i in range(400)]
    got = versions_of_users(s, users)
    assert 0.70 <= sum(v == "1" for v in got.values()) / len(users) <= 0.90


def test_cascade_and_shadow_from_configuration(server_factory, tmp_path):
    s = server_factory("--version-policy", "all", "--cascade", "sentiment@1>2=0.75", "--shadow", "sentiment@2=30",
                       "--no-cache", repo=repo_with_versions(tmp_path))
    assert s.get("/admin/models/sentiment/cascade").json()["cascade"] == {"first": "1", "then": "2",
                                                                          "threshold": 0.75}
    assert s.get("/admin/models/sentiment/shadow").json()["shadow"] == {"version": "2", "percent": 30}
    # A request that names no version takes the cascade: its first version answers what it is sure of.
    r = s.predict("a wonderful , moving film .")
    assert r.status_code == 200
    assert r.json()["model_version"] == ("1" if r.json()["confidence"] >= 0.75 else "2")


@pytest.mark.parametrize("setting, value, words", [
    ("--traffic", "sentiment@1=80,sentiment@2=30", "sum to 110"),
    ("--traffic", "sentiment@1=100,nope@1=100", "not found"),
    ("--traffic", "sentiment@7=100", "no version 7"),
    ("--traffic", "sentiment=100", "MODEL@VERSION=PERCENT"),
    ("--cascade", "sentiment@1>7=0.5", "models.cascade: sentiment@1>7=0.5: model 'sentiment' has no version 7"),
    ("--cascade", "sentiment@1>2=1.5", "MODEL@FIRST>THEN=THRESHOLD"),
    ("--shadow", "nope@1=10", "models.shadow: nope@1=10: model 'nope' not found"),
])
def test_bad_policy_configuration_stops_the_start(tmp_path, setting, value, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "serve", "--port", "0", "--model-repository", str(repo_with_versions(tmp_path)),
                        "--keys-file", "/nonexistent/k.json", "--batch-data-dir", str(tmp_path / "jobs"),
                        setting, value], capture_output=True, timeout=60, env=env)
    assert p.returncode == 2
    assert words.encode() in p.stdout + p.stderr, (p.stdout + p.stderr)[-500:]


def test_admin_load_and_unload(server_factory, tmp_path):
    repo = tmp_path / "repo"
    (repo / "sentiment").mkdir(parents=True)
    os.symlink(SENTIMENT, repo / "sentiment" / "1")
    os.symlink(SENTIMENT, repo / "sentiment" / "2")
    s = server_factory("--poll-interval", "0", repo=repo)        # latest: only 2 loads

    def wait_states(want):
        wait_until(lambda: states(s) == want, 30, lambda: "states %r (now %r)" % (want, states(s)))

    assert states(s) == {"2": "available"}
    r = requests.post(s.url("/admin/models/sentiment/versions/1/load"), timeout=30)
    assert r.status_code == 202 and r.json() == {"model": "sentiment", "version": "1", "action": "load"}
    wait_states({"1": "available", "2": "available"})              # the policy does not unload it
    assert served_version(s, **{"X-Model-Version": "1"}) == "1"
    assert served_version(s) == "2"
    r = requests.post(s.url("/admin/models/sentiment/versions/2/unload"), timeout=30)
    assert r.status_code == 202
    wait_states({"1": "available"})
    assert served_version(s) == "1"
    assert_error(s.predict("x", headers={"X-Model-Version": "2"}), 404, "version_not_found")
    assert_error(requests.post(s.url("/admin/models/sentiment/versions/9/load"), timeout=30), 404,
                 "version_not_found")
    assert_error(requests.post(s.url("/admin/models/nope/versions/1/load"), timeout=30), 404, "model_not_found")
    assert_error(requests.get(s.url("/admin/models/sentiment/versions/1/load"), timeout=30), 405,
                 "method_not_allowed")
