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

GET /v1/gateway/budgets says what is left: both instances answer the
numbers the Redis counter holds (the settled cost of the answers given); a
key sees only its own budget, a key with scope admin every configured key's
and that of requests without a key; in memory, where the store answers at
once, many keys' counters are read in one request; the store's outage is
503 budgets_unavailable; no budgets section is an empty list and no gateway
404 gateway_not_configured.
"""

import concurrent.futures
import subprocess
import time

import pytest
import requests

from fake_llm import FakeLLM
from harness import assert_error, sample, wait_until
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
%s
""" % (fake.base_url, "" if budgets is None else "budgets:\n" + budgets))
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


def budgets(s, key):
    r = requests.get(s.url("/v1/gateway/budgets"), headers=auth(key) if key else {}, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list"
    return doc["data"]


def settled(s, key, usd):
    """s's entries for key once its daily counter holds usd: each answer is
    settled as it is sent, and its store step may land a moment after the
    client has the answer."""
    def read():
        data = budgets(s, key)
        return data if data[0]["daily"]["spent_usd"] == pytest.approx(usd) else None
    return wait_until(read, 10, "the answers to be settled")


def without_clock(entries):
    """The entries without resets_in_s (two reads a second apart may differ)."""
    return [{k: ({f: x for f, x in v.items() if f != "resets_in_s"} if isinstance(v, dict) else v)
             for k, v in e.items()} for e in entries]


def test_budgets_left_shared_by_two_instances(server_factory, redis_factory, fake, tmp_path):
    redis = redis_factory()
    keys_file = tmp_path / "keys.json"
    web = create(keys_file, "web", "chat")
    other = create(keys_file, "other", "chat")
    ops = create(keys_file, "ops", "chat,admin")
    reader = create(keys_file, "reader", "predict")
    cfg = config(tmp_path, fake, "  default: {daily_usd: 1000}\n  keys:\n"
                                 "    web: {daily_usd: 0.05, monthly_usd: 2, tokens_per_minute: 1000}\n"
                                 "    batch-jobs: {monthly_usd: 300}")
    common = ["--gateway-config", str(cfg), "--redis-url", redis.url(), "--keys-file", str(keys_file)]
    a = server_factory(*common, env={"TEST_LLM_KEY": "sk"})
    b = server_factory(*common, env={"TEST_LLM_KEY": "sk"})

    # Nothing spent yet: what is left is the whole limit.
    [fresh] = budgets(a, web)
    assert fresh["key"] == "web" and fresh["budget"] == "keys"
    assert fresh["daily"]["limit_usd"] == 0.05 and fresh["daily"]["spent_usd"] == 0
    assert fresh["daily"]["left_usd"] == 0.05
    assert fresh["tokens_per_minute"]["used"] == 0 and fresh["tokens_per_minute"]["left"] == 1000

    minute = int(time.time()) // 60
    answers = [chat(a if i % 2 else b, web) for i in range(7)]
    assert [r.status_code for r in answers] == [200] * 7
    tokens = sum(r.json()["usage"]["total_tokens"] for r in answers)
    cost = tokens * TOKEN_USD
    left_a = settled(a, web, cost)
    left_b = budgets(b, web)
    same_minute = int(time.time()) // 60 == minute
    # Both instances read the one shared counter, which holds the settled cost.
    assert without_clock(left_a) == without_clock(left_b)
    [e] = left_a
    assert e["daily"]["spent_usd"] == pytest.approx(cost) == redis_get(redis, "web:d:") / 1e6
    assert e["daily"]["left_usd"] == pytest.approx(0.05 - cost)
    assert e["monthly"] == {"limit_usd": 2, "spent_usd": pytest.approx(cost), "left_usd": pytest.approx(2 - cost),
                            "resets_in_s": e["monthly"]["resets_in_s"]}
    assert 0 < e["daily"]["resets_in_s"] <= 86400 and 0 < e["monthly"]["resets_in_s"] <= 31 * 86400
    tpm = e["tokens_per_minute"]
    assert tpm["limit"] == 1000 and tpm["used"] + tpm["left"] == 1000 and 1 <= tpm["resets_in_s"] <= 60
    if same_minute:  # the requests and the reads in one clock minute
        assert tpm["used"] == tokens

    # A key without admin sees only its own budget: one not listed gets the
    # default's limits, on counters of its own.
    assert chat(b, other).status_code == 200
    [mine] = settled(a, other, 5 * TOKEN_USD)
    assert mine["key"] == "other" and mine["budget"] == "default" and mine["daily"]["limit_usd"] == 1000
    assert mine["monthly"] is None and mine["tokens_per_minute"] is None

    # With admin: every key of the budgets section, and requests without a
    # key (key null, the default budget); not the keys merely used.
    every = {e["key"]: e for e in budgets(b, ops)}
    assert set(every) == {"web", "batch-jobs", None}
    assert without_clock([every["web"]]) == without_clock(left_a)
    assert every["batch-jobs"]["daily"] is None and every["batch-jobs"]["monthly"]["spent_usd"] == 0
    assert every[None]["budget"] == "default" and every[None]["daily"]["limit_usd"] == 1000

    # Refused: no key, a key without scope chat, another method.
    assert_error(requests.get(a.url("/v1/gateway/budgets"), timeout=30), 401, "missing_api_key")
    assert_error(requests.get(a.url("/v1/gateway/budgets"), headers=auth(reader), timeout=30), 403,
                 "insufficient_scope")
    assert_error(requests.post(a.url("/v1/gateway/budgets"), headers=auth(web), timeout=30), 405,
                 "method_not_allowed")

    # The store is gone: 503 until it is back.
    redis.kill()

    def refused():
        r = requests.get(a.url("/v1/gateway/budgets"), headers=auth(ops), timeout=30)
        return r if r.status_code == 503 else None
    r = wait_until(refused, 30, "the budgets to be unavailable")
    assert_error(r, 503, "budgets_unavailable")
    assert r.headers["Retry-After"] == "1" and "cannot be reached" in r.json()["error"]["message"]


def test_budgets_left_in_memory(server_factory, fake, tmp_path):
    """The memory store answers each read at once: many keys' counters are
    read in one request without the answer coming from inside a read."""
    names = ["team-%02d" % i for i in range(60)]
    cfg = config(tmp_path, fake, "  default: {daily_usd: 5, tokens_per_minute: 500}\n  keys:\n" + "".join(
        "    %s: {daily_usd: %d, monthly_usd: 50, tokens_per_minute: 100}\n" % (n, i + 1)
        for i, n in enumerate(names)))
    s = server_factory("--gateway-config", str(cfg), env={"TEST_LLM_KEY": "sk"})
    r = chat(s, None)  # no keys configured: anonymous, under the default budget
    assert r.status_code == 200
    # Without keys every endpoint is open, this one as for an admin.
    data = budgets(s, None)
    assert [e["key"] for e in data] == names + [None]
    assert [e["daily"]["limit_usd"] for e in data[:-1]] == list(range(1, 61))
    # Requests without a key come last, after every other key's reads.
    anonymous, tokens = data[-1], r.json()["usage"]["total_tokens"]
    assert anonymous["daily"]["spent_usd"] == pytest.approx(tokens * TOKEN_USD)
    assert anonymous["daily"]["left_usd"] == pytest.approx(5 - tokens * TOKEN_USD)
    assert anonymous["monthly"] is None
    used = anonymous["tokens_per_minute"]["used"]
    assert used in (0, tokens)  # 0 only when a new minute began since
    assert anonymous["tokens_per_minute"]["left"] == 500 - used


def test_budgets_left_without_budgets_or_gateway(server_factory, fake, tmp_path):
    s = server_factory("--gateway-config", str(config(tmp_path, fake, None)), env={"TEST_LLM_KEY": "sk"})
    assert budgets(s, None) == []  # nothing is counted
    plain = server_factory()
    assert_error(requests.get(plain.url("/v1/gateway/budgets"), timeout=30), 404, "gateway_not_configured")
