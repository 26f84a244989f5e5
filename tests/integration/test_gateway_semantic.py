"""test_gateway_semantic.py - a route's semantic cache (docs/gateway.md):
prompts are embedded by a local embedding model that aiserve itself serves
(no external embedding API), and an answer stored under a prompt at least
`threshold` similar (cosine) answers a new one, marked X-Cache: SEMANTIC
with the similarity, without an upstream call. The threshold is set from
the model's own embeddings (computed with `aiserve embed`), between the
similarity of a reworded prompt and that of an unrelated one, so the test
holds for whatever the fixture's weights are.
"""

import json
import math
import os
import subprocess

import pytest
import requests

from fake_llm import FakeLLM
from harness import BIN, SENTIMENT, fixture_model, make_repo

EMBED = fixture_model("bert-base-embed")
A = "What is the capital city of France?"
A2 = "what is the capital city of france"
B = "Write a limerick about a cat who learns to juggle oranges."


def embed(text):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "embed", "--model", EMBED, "--normalize", text], capture_output=True, timeout=60,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["embedding"]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture
def fake():
    f = FakeLLM()
    yield f
    f.stop()


def config(tmp_path, fake, threshold, model="minilm"):
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("""
providers:
  - {name: fake, kind: openai, base_url: %s, api_key_env: TEST_LLM_KEY}
models:
  - {name: small, provider: fake, upstream_model: small-up}
routes:
  - name: auto
    rules: []
    default: small
    semantic_cache: {model: %s, threshold: %r, max_entries: 100}
""" % (fake.base_url, model, threshold))
    return cfg


def chat(s, text, **kw):
    return requests.post(s.url("/v1/chat/completions"), timeout=30,
                         json={"model": "auto", "temperature": 0.7, "messages": [{"role": "user", "content": text}]},
                         **kw)


def test_a_similar_prompt_is_answered_from_the_semantic_cache(server_factory, fake, tmp_path):
    close, far = cosine(embed(A), embed(A2)), cosine(embed(A), embed(B))
    assert close > far, (close, far)
    threshold = max(0.5, (close + far) / 2)
    assert close >= threshold
    repo = make_repo(tmp_path, sentiment=SENTIMENT, minilm=EMBED)
    s = server_factory("--gateway-config", str(config(tmp_path, fake, threshold)), repo=repo,
                       env={"TEST_LLM_KEY": "sk"})
    fake.script("small-up", [{"text": "Paris."}, {"text": "A cat named Lou..."}, {"text": "fresh"}])

    first = chat(s, A)
    assert first.status_code == 200 and first.headers.get("X-Cache") != "SEMANTIC"
    assert first.json()["choices"][0]["message"]["content"] == "Paris."
    assert len(fake.calls("small-up")) == 1

    again = chat(s, A2)                                   # reworded: the cached answer, no upstream call
    assert again.status_code == 200, again.text
    assert again.headers["X-Cache"] == "SEMANTIC"
    assert float(again.headers["X-Semantic-Similarity"]) >= threshold
    assert again.json()["choices"][0]["message"]["content"] == "Paris."
    assert len(fake.calls("small-up")) == 1

    other = chat(s, B)                                    # unrelated: the upstream answers
    assert other.headers.get("X-Cache") != "SEMANTIC"
    assert other.json()["choices"][0]["message"]["content"] == "A cat named Lou..."
    assert len(fake.calls("small-up")) == 2

    fresh = chat(s, A2, headers={"Cache-Control": "no-cache"})   # the client asks for a fresh answer
    assert fresh.headers.get("X-Cache") != "SEMANTIC"
    assert len(fake.calls("small-up")) == 3

    # Streamed: the cached answer as chunks.
    r = requests.post(s.url("/v1/chat/completions"), timeout=30, stream=True,
                      json={"model": "auto", "stream": True, "temperature": 0.7,
                            "messages": [{"role": "user", "content": A}]})
    assert r.headers["X-Cache"] == "SEMANTIC"
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Paris."
    m = s.metrics()
    assert ("aiserve_llm_cache_requests_total", frozenset({("result", "semantic_hit")})) in m

    # Only requests that agree on everything besides the messages share answers.
    colder = requests.post(s.url("/v1/chat/completions"), timeout=30,
                           json={"model": "auto", "temperature": 0.2, "messages": [{"role": "user", "content": A}]})
    assert colder.headers.get("X-Cache") != "SEMANTIC"
    assert len(fake.calls("small-up")) == 4


def test_a_semantic_cache_on_a_model_that_is_not_there_stops_the_start(fake, tmp_path):
    repo = make_repo(tmp_path, sentiment=SENTIMENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env["TEST_LLM_KEY"] = "sk"
    p = subprocess.run([BIN, "serve", "--port", "0", "--model-repository", str(repo), "--keys-file",
                        "/nonexistent/k.json", "--batch-data-dir", str(tmp_path / "jobs"), "--gateway-config",
                        str(config(tmp_path, fake, 0.9, model="nope"))], capture_output=True, timeout=60, env=env)
    assert p.returncode == 2
    assert b"semantic_cache.model 'nope' is not a model of the model repository" in p.stdout + p.stderr
