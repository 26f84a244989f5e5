"""test_versions.py - which versions a model serves (models.version_policy,
as TF Serving's): latest (with fallback past a broken newest version),
latest:N, all and specific, each checked in /v1/models and by pinning
versions through the path and X-Model-Version; and a policy that does not
parse stops the start."""

import os
import subprocess

import pytest

from harness import BIN, SENTIMENT, assert_error


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
