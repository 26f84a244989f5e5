"""test_batch_policy.py - a cascade and a shadow configured for a model
(PUT /admin/models/{name}/cascade and /shadow) apply to batch jobs, in SQLite
and in Redis: a job on a two-version repository runs on the cascade's first
version, each result names the version that answered it (the second for the
inputs the first is unsure of) and equals what /predict answers under the
same cascade, and /metrics counts the job's texts in
aiserve_cascade_texts_total and aiserve_shadow_predictions_total.
"""

import os

import pytest
import requests

from harness import SENTIMENT, sample, wait_until
from test_batch import all_results, wait_status

TEXTS = ["a wonderful , moving film .", "dull and far too long .", "it 's fine .", "meh",
         "not bad at all", "the best film of the year", "i hated every minute", "a quiet , odd little film"]


def two_versions(tmp_path):
    """sentiment/1 and /2, both the bundled model."""
    repo = tmp_path / "repo"
    (repo / "sentiment").mkdir(parents=True)
    for v in ("1", "2"):
        os.symlink(SENTIMENT, repo / "sentiment" / v)
    return repo


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_cascade_and_shadow_apply_to_batch_jobs(server_factory, redis_factory, tmp_path, store):
    args = ["--version-policy", "all", "--no-cache"]
    if store == "redis":
        args += ["--redis-url", redis_factory().url()]
    s = server_factory(*args, repo=two_versions(tmp_path))
    # Version 1's confidence in each text; the threshold splits them in half.
    first = {t: s.predict(t, headers={"X-Model-Version": "1"}).json()["confidence"] for t in TEXTS}
    ranked = sorted(first.values())
    threshold = (ranked[len(TEXTS) // 2 - 1] + ranked[len(TEXTS) // 2]) / 2
    unsure = {t for t, c in first.items() if c < threshold}
    assert 0 < len(unsure) < len(TEXTS)
    r = requests.put(s.url("/admin/models/sentiment/cascade"),
                     json={"first": 1, "then": 2, "threshold": threshold}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.put(s.url("/admin/models/sentiment/shadow"), json={"version": 2, "percent": 100}, timeout=30)
    assert r.status_code == 200, r.text

    inputs = TEXTS * 10                                     # 80 inputs: three chunks
    r = s.post("/v1/batch", json={"model": "sentiment", "inputs": inputs})
    assert r.status_code == 202, r.text
    job = wait_status(s, r.json()["id"])
    assert job["model_version"] == "1"                      # the cascade's first version
    results, _ = all_results(s, job["id"])
    assert [x["index"] for x in results] == list(range(len(inputs)))
    for x, t in zip(results, inputs):
        assert x["result"]["model_version"] == ("2" if t in unsure else "1"), (t, first[t], threshold)

    # Every text counted once: by the cascade at once, by the shadow (the
    # same weights: agreeing) once its background copies ran.
    def shadowed():
        m = s.metrics()
        return m if sample(m, "aiserve_shadow_predictions_total", model="sentiment", version="2",
                           result="agree") >= len(inputs) else None

    m = wait_until(shadowed, 60, "the shadow copies of the job's texts to be counted")
    assert sample(m, "aiserve_shadow_predictions_total", model="sentiment", version="2",
                  result="agree") == len(inputs)
    assert sample(m, "aiserve_shadow_predictions_total", model="sentiment", version="2", result="disagree") == 0
    assert sample(m, "aiserve_cascade_texts_total", model="sentiment", result="escalated") == 10 * len(unsure)
    assert sample(m, "aiserve_cascade_texts_total", model="sentiment", result="first") == \
        10 * (len(TEXTS) - len(unsure))
    assert sample(m, "aiserve_cascade_texts_total", model="sentiment", result="error") == 0

    # Each result is what /predict answers under the cascade (checked last:
    # these requests take the cascade and the shadow too).
    singles = {t: s.predict(t).json() for t in TEXTS}
    assert all(x["result"] == singles[t] for x, t in zip(results, inputs))
