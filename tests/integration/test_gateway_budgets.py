"""test_gateway_budgets.py - per-key budgets and tokens-per-minute limits of
the LLM gateway (docs/gateway.md, "Budgets"), held across two aiserve
instances that share one real redis-server, as replicas behind a load
balancer would.

Prices make the arithmetic exact: 1000 USD per million tokens is $0.001 a
token, so the fake upstream's usage (fake_llm.py: prompt len//4+1,
completion len//4+1 tokens) gives each answer a known cost. A key whose
daily budget covers a handful of answers sends many requests at once to
both instances; the answers that got through never cost more than the
budget plus one request's reservation, the refused ones are 429
budget_exceeded with Retry-After, and the Redis counter holds exactly the
settled cost of the answers given. Tokens per minute refuse with 429
tokens_per_minute_exceeded. Keys without a budget of their own get the
default; another key's spending does not touch it.
"""

import concurrent.futures
import subprocess

import pytest
import requests

from fake_llm import FakeLLM
from harness import assert_error, sample
from test_auth import auth, create

TEXT = "ok from cheap"           # 13 characters: 4 completion tokens
PROMPT = "hi"                    # 1 prompt token (fake's count)
TOKEN_USD = 0.001


@pytest.fixture
def fake():
    f = FakeLLM()
    f.script("cheap-up", [{"text": TEXT}])
    yield f
    f.stop()


def config(tmp_path, fake, budgets):
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("""
providers:
  - {name: fake, kind: openai, base_url: %s, api_key_env: TEST_LLM_KEY, timeout: 5s}
models:
  - {name: cheap, provider: fake, upstream_model: cheap-up, input_price: 1000, output_price: 1000,
     context_window: 100000}
cache: {enabled: false}
budgets:
%s
""" % (fake.base_url, budgets))
    return cfg


def chat(s, key, **kw):
    return requests.post(s.url("/v1/chat/completions"), headers=auth(key), timeout=30,
                         json={"model": "cheap", "max_tokens": 10, "messages": [{"role": "user", "content": PROMPT}]},
                         **kw)


def redis_get(redis, key):
    p = subprocess.run(["redis-cli", "-p", str(redis.port), "--raw", "KEYS", "*" + key + "*"],
                       capture_output=True, timeout=10)
    names = p.stdout.decode().split()
    assert len(names) == 1, names
    # A counter is the hash {n: value} (src/store/redis.c).
    p = subprocess.run(["redis-cli", "-p", str(redis.port), "--raw", "HGET", names[0], "n"], capture_output=True,
                       timeout=10)
    return int(p.stdout.decode().strip())


def test_two_instances_never_let_a_key_overspend(server_factory, redis_factory, fake, tmp_path):
    redis = redis_factory()
    keys_file = tmp_path / "keys.json"
    web = create(keys_file, "web", "chat")
    other = create(keys_file, "other", "chat")
    # The reservation of one request: (prompt estimate + max_tokens 10) tokens.
    cfg = config(tmp_path, fake, "  default: {daily_usd: 1000}\n  keys:\n    web: {daily_usd: 0.05}")
    common = ["--gateway-config", str(cfg), "--redis-url", redis.url(), "--keys-file", str(keys_file)]
    a = server_factory(*common, env={"TEST_LLM_KEY": "sk"})
    b = server_factory(*common, env={"TEST_LLM_KEY": "sk"})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: chat(a if i % 2 else b, web), range(40)))
    # Reservations left unused were given back: the rest of the budget is
    # spent one request at a time, until the next reservation no longer fits.
    for i in range(20):
        answers.append(chat(a if i % 2 else b, web))
        if answers[-1].status_code == 429:
            break
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert ok and refused
    for r in refused:
        assert_error(r, 429, "budget_exceeded")
        assert r.json()["error"]["type"] == "insufficient_quota"
        assert int(r.headers["Retry-After"]) > 0
        assert "daily budget of the API key 'web'" in r.json()["error"]["message"]
    cost = sum((u.json()["usage"]["prompt_tokens"] + u.json()["usage"]["completion_tokens"]) * TOKEN_USD
               for u in ok)
    # Reservations hold the limit: what was answered fits the budget, and
    # the budget is used up to less than one reservation (at most 15 tokens).
    assert 0.05 - 15 * TOKEN_USD < cost <= 0.05 + 1e-9, (len(ok), cost)
    # The shared counter holds exactly the settled cost (micro-dollars).
    assert redis_get(redis, "web:d:") == round(cost * 1e6)
    # Both instances refused some, so the counter really was shared.
    ma, mb = a.metrics(), b.metrics()
    assert sample(ma, "aiserve_llm_budget_refusals_total", key="web", limit="daily") > 0
    assert sample(mb, "aiserve_llm_budget_refusals_total", key="web", limit="daily") > 0
    # Per-key cost is counted where it was spent.
    spent = sum(sample(m, "aiserve_llm_cost_usd_total", model="cheap", key="web") for m in (ma, mb))
    assert spent == pytest.approx(cost)
    # Another key is untouched by web's spending.
    assert chat(a, other).status_code == 200
    assert chat(b, web).status_code == 429
    assert chat(a, web).status_code == 429


def test_tokens_per_minute(server_factory, fake, tmp_path):
    keys_file = tmp_path / "keys.json"
    key = create(keys_file, "burst", "chat")
    # Each request reserves its prompt estimate plus max_tokens 10: two fit in 30.
    cfg = config(tmp_path, fake, "  keys:\n    burst: {tokens_per_minute: 30}")
    s = server_factory("--gateway-config", str(cfg), "--keys-file", str(keys_file), env={"TEST_LLM_KEY": "sk"})
    codes = [chat(s, key).status_code for _ in range(6)]
    assert codes[0] == 200 and 429 in codes
    r = chat(s, key)
    assert_error(r, 429, "tokens_per_minute_exceeded")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "tokens per minute" in r.json()["error"]["message"]
    # Refused requests never reached the upstream.
    assert len(fake.calls("cheap-up")) == codes.count(200)
