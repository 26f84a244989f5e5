"""test_gateway.py - the LLM gateway (POST /v1/chat/completions) with the real
binary in front of a fake OpenAI-compatible upstream on loopback
(fake_llm.py), as a client sees it: answers plain and streamed, routing
rules, retries (5xx, 429 with Retry-After, none on 400), fallbacks (models,
routes, context windows, the stale cached answer, the default reply),
circuit breakers, the exact cache, PII guardrails on input and output
(streams included), a client leaving mid-stream, an upstream dying
mid-stream, garbage and oversized answers, bad requests, the official
`openai` npm client, API key scopes and cost per key, and the aiserve_llm_*
metrics after each.

Every configuration is written as JSON, which the gateway's YAML reader
takes as flow-style YAML; retry waits are 50-100 ms and
breaker cooldowns a fraction of a second, and every wait is a poll with a
deadline.
"""

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from fake_llm import FakeLLM
from harness import BIN, MODELS, assert_error, sample, wait_until
from test_auth import create as create_key
from test_embeddings import openai_client_dir  # noqa: F401 (the fixture that installs openai@4 with npm)

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT = "/v1/chat/completions"
KEY = "sk-fake-upstream-key-0123456789"
DEFAULT_REPLY = "I'm unable to process your request at the moment."
FILTERED = "[Output filtered for security]"

# Prices in USD per million tokens; context windows in tokens (0: unknown).
MODEL_DEFS = [
    {"name": "small", "upstream_model": "up-small", "input_price": "0.5", "output_price": "1.5",
     "context_window": "1000"},
    {"name": "big", "upstream_model": "up-big", "input_price": "3", "output_price": "15", "context_window": "100000"},
    {"name": "huge", "upstream_model": "up-huge", "input_price": "10", "output_price": "30",
     "context_window": "1000000"},
    {"name": "backup", "upstream_model": "up-backup", "input_price": "0.1", "output_price": "0.2"},
]


@pytest.fixture
def fake():
    f = FakeLLM()
    yield f
    f.stop()


@pytest.fixture
def gateway(server_factory, fake, tmp_path):
    """start(*server_args, fallbacks={model: [...]}, routes=[...], provider={...}, **sections): a
    server whose gateway has the four models above on the fake (provider settings added to its
    entry), two tries per model with 50-100 ms waits, no breaker unless a test sets one, and the
    given top-level sections."""
    n = [0]

    def start(*args, fallbacks=None, routes=None, provider=None, repo=None, **sections):
        models = []
        for m in MODEL_DEFS:
            m = dict(m, provider="fake")
            if fallbacks and m["name"] in fallbacks:
                m["fallbacks"] = fallbacks[m["name"]]
            models.append(m)
        cfg = {
            "providers": [dict({"name": "fake", "kind": "openai", "base_url": fake.base_url,
                                "api_key_env": "FAKE_LLM_KEY"}, **(provider or {}))],
            "models": models,
            "routes": routes if routes is not None else [{"name": "auto", "simple": "small", "complex": "big"}],
            "retry": {"attempts": "2", "min_wait": "50ms", "max_wait": "100ms"},
            "breaker": {"failures": "1000", "failure_ratio": "0"},
            "deadline": "20s",
        }
        cfg.update(sections)
        n[0] += 1
        path = tmp_path / ("gateway-%d.yaml" % n[0])
        path.write_text(json.dumps(cfg, indent=1))
        extra = {"repo": repo} if repo is not None else {}
        return server_factory("--gateway-config", str(path), *args, env={"FAKE_LLM_KEY": KEY}, **extra)

    return start


def user(content):
    return [{"role": "user", "content": content}]


def chat(s, content="hi", model="small", headers=None, **fields):
    return s.post(CHAT, json=dict({"model": model, "messages": user(content)}, **fields), headers=headers)


def sse_events(resp):
    """The data payloads of an event stream answer: chunk objects, and "[DONE]" as it is."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
    text = resp.content.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert all(line.startswith("data: ") for line in lines), block
        data = "\n".join(line[len("data: "):] for line in lines)
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def send_chat(s, body):
    """A connection with a chat request sent on it, for tests that then leave."""
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    data = json.dumps(body).encode()
    c.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (CHAT.encode(), len(data), data))
    return c


def stream(s, content="hi", model="small", headers=None, **fields):
    r = s.post(CHAT, json=dict({"model": model, "messages": user(content), "stream": True}, **fields),
               headers=headers)
    return r, sse_events(r)


def chunks_of(events):
    """The chat.completion.chunk objects of a stream that ended with [DONE]."""
    assert events and events[-1] == "[DONE]", events[-3:]
    assert events.count("[DONE]") == 1
    return [e for e in events[:-1] if "error" not in e]


def content_of(events):
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks_of(events) if c.get("choices"))


def text_of(r):
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["choices"][0]["message"]["content"]


def metric(s, name, **labels):
    return sample(s.metrics(), name, **labels)


def outcome(call):
    """How the fake says an upstream call ended, once its handler has finished (the client may
    have its answer a moment before the fake's thread records it)."""
    return wait_until(lambda: call["outcome"], 5, "the fake to record the end of %s" % call["model"])


# -- answers ----------------------------------------------------------------------------------------------------------


def test_plain_and_streamed_answers(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"text": "Hello there, friend."}])
    r = chat(s, temperature=0.5, max_tokens=50, x_vendor_option={"beam": 2})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert body["model"] == "small"                      # the gateway's name, not the upstream's
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there, friend."}
    assert body["choices"][0]["finish_reason"] == "stop"
    plain_usage = body["usage"]
    assert plain_usage["prompt_tokens"] > 0 and plain_usage["completion_tokens"] > 0
    assert r.headers["X-Gateway-Model"] == "small"
    assert r.headers["X-Route-Reason"] == "model small"
    assert "X-Gateway-Fallbacks" not in r.headers
    (up,) = fake.calls()
    assert up["path"] == "/v1/chat/completions" and up["model"] == "up-small"
    assert up["headers"]["Authorization"] == "Bearer " + KEY
    assert up["body"]["messages"] == user("hi")
    assert up["body"]["temperature"] == 0.5 and up["body"]["max_tokens"] == 50   # the client's fields, forwarded
    assert up["body"]["x_vendor_option"] == {"beam": 2}                          # unknown ones too
    assert "stream" not in up["body"] and "stream_options" not in up["body"]

    # streamed, no usage asked for: none given, though the gateway asked the upstream for it
    r, events = stream(s, temperature=0.5, max_tokens=50)
    chunks = chunks_of(events)
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "small" for c in chunks)
    assert content_of(events) == "Hello there, friend."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1] == "stop"
    assert not [c for c in chunks if c.get("usage")]
    assert r.headers["X-Gateway-Model"] == "small"
    up = fake.calls()[-1]
    assert up["body"]["stream"] is True and up["body"]["stream_options"] == {"include_usage": True}
    assert up["headers"]["Authorization"] == "Bearer " + KEY and outcome(up) == "complete"

    # streamed with include_usage: one usage chunk (no choices) before [DONE], the upstream's numbers
    r, events = stream(s, temperature=0.5, max_tokens=50, stream_options={"include_usage": True})
    usage = [c for c in chunks_of(events) if c.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == [] and usage[0]["model"] == "small"
    assert usage[0] is chunks_of(events)[-1]
    assert usage[0]["usage"] == plain_usage
    assert content_of(events) == "Hello there, friend."

    m = s.metrics()
    assert sample(m, "aiserve_llm_requests_total", target="small", outcome="ok") == 3
    assert sample(m, "aiserve_llm_upstream_requests_total", model="small", result="ok") == 3
    assert sample(m, "aiserve_llm_tokens_total", model="small", key="anonymous", kind="prompt") == \
        3 * plain_usage["prompt_tokens"]

    # events split anywhere by the network read the same; an upstream that reports no usage gets
    # the gateway's estimate in the usage chunk
    fake.script("up-small", [{"text": "Hello there, friend.", "sse_split": 5, "usage": False}])
    r, events = stream(s, temperature=0.5, stream_options={"include_usage": True})
    assert content_of(events) == "Hello there, friend."
    (usage,) = [c["usage"] for c in chunks_of(events) if c.get("usage")]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    # the models and routes are listed for OpenAI clients
    listed = {d["id"]: d["owned_by"] for d in s.get("/v1/models").json()["data"]}
    assert listed["small"] == "fake" and listed["backup"] == "fake" and listed["auto"] == "aiserve-route"


def test_api_key_from_a_file(server_factory, fake, tmp_path):
    secret = tmp_path / "upstream.key"
    secret.write_text("sk-from-a-file\n")
    cfg = {"providers": [{"name": "filed", "base_url": fake.base_url, "api_key_file": str(secret)}],
           "models": [{"name": "m", "provider": "filed", "upstream_model": "up-m"}]}
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(cfg))
    s = server_factory("--gateway-config", str(path))
    assert text_of(chat(s, model="m")) == "ok from up-m"
    assert fake.calls()[0]["headers"]["Authorization"] == "Bearer sk-from-a-file"


def run_serve(config_path, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    e["AISERVE_KEYS_FILE"] = "/nonexistent/aiserve-tests/keys.json"
    e.update(env or {})
    return subprocess.run([BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--model-repository", MODELS,
                           "--gateway-config", str(config_path)], capture_output=True, timeout=60, env=e)


@pytest.mark.parametrize("provider,fragment", [
    ({"api_key": "sk-written-in-the-file"}, "api_key_env"),
    ({"api_key_env": "FAKE_LLM_UNSET_KEY"}, "FAKE_LLM_UNSET_KEY is not set"),
    ({"api_key_env": "FAKE_LLM_KEY", "timeot": "5s"}, "unknown key 'timeot'"),
])
def test_bad_configuration_refuses_to_start(tmp_path, provider, fragment):
    cfg = {"providers": [dict({"name": "p", "base_url": "http://127.0.0.1:9/v1"}, **provider)],
           "models": [{"name": "m", "provider": "p"}]}
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(cfg))
    p = run_serve(path, env={"FAKE_LLM_KEY": "sk-secret-from-env"})
    assert p.returncode == 2, p.stdout
    out = p.stdout.decode() + p.stderr.decode()
    assert fragment in out and "providers[0]" in out, out
    assert "sk-written-in-the-file" not in out and "sk-secret-from-env" not in out   # a key never in a message
    assert '"listening"' not in out


# -- routing ----------------------------------------------------------------------------------------------------------


def test_service_route_simple_and_complex(gateway, fake):
    s = gateway()
    cases = [
        ("What is the capital of France?", "small", "route auto: default"),
        ("Please ANALYZE these sales figures", "big", "route auto: rule 1 complex_task 'analyze'"),
        ("Can you explain in detail how DNS works?", "big", "route auto: rule 1 complex_task 'explain in detail'"),
        ("compare apples and pears", "big", "route auto: rule 1 complex_task 'compare'"),
        ("evaluate my essay", "big", "route auto: rule 1 complex_task 'evaluate'"),
        ("x" * 500, "big", "route auto: rule 2 long_prompt"),
        ("x" * 499, "small", "route auto: default"),
        ("é" * 499, "small", "route auto: default"),      # characters, not bytes
    ]
    for content, model, reason in cases:
        r = chat(s, content, model="auto")
        assert r.status_code == 200, r.text
        assert (r.headers["X-Gateway-Model"], r.headers["X-Route-Reason"]) == (model, reason), content[:40]
        assert r.json()["model"] == model
        assert fake.calls()[-1]["model"] == "up-" + model
    # the rule reads the last user message, not the system prompt
    r = s.post(CHAT, json={"model": "auto", "messages": [{"role": "system", "content": "analyze everything"},
                                                         {"role": "user", "content": "hello"}]})
    assert r.headers["X-Gateway-Model"] == "small"


def test_route_rules(gateway, fake):
    routes = [
        {"name": "triage", "default": "small", "rules": [
            {"keywords": ["refund", "Invoice"], "model": "backup", "reason": "billing"},
            {"min_max_tokens": "500", "model": "huge"},
            {"min_chars": "300", "model": "big"},
            {"min_input_tokens": "50", "model": "big"},
        ]},
        {"name": "fit", "default": "backup", "rules": [{"cheapest_fit": ["big", "small"]}]},
    ]
    s = gateway(routes=routes)
    many_words = " ".join(["a"] * 60)                  # 119 characters, about 60 tokens
    cases = [
        ("triage", "where is my INVOICE?", {}, "backup", "route triage: rule 1 billing 'invoice'"),
        ("triage", "hello", {"max_tokens": 500}, "huge", "route triage: rule 2 min_max_tokens 500"),
        ("triage", "hello", {"max_completion_tokens": 499}, "small", "route triage: default"),
        ("triage", "y" * 300, {}, "big", "route triage: rule 3 min_chars 300"),
        ("triage", many_words, {}, "big", "route triage: rule 4 min_input_tokens 50"),
        ("triage", "hello", {}, "small", "route triage: default"),
        ("fit", "hello", {}, "small", "route fit: rule 1 cheapest_fit"),               # cheapest that fits
        ("fit", "hello", {"max_tokens": 2000}, "big", "route fit: rule 1 cheapest_fit"),  # small's 1000 too few
        ("fit", "hello", {"max_tokens": 200000}, "backup", "route fit: default"),          # neither fits
    ]
    for route, content, fields, model, reason in cases:
        r = chat(s, content, model=route, **fields)
        assert r.status_code == 200, r.text
        assert (r.headers["X-Gateway-Model"], r.headers["X-Route-Reason"]) == (model, reason), (content[:30], fields)
        assert fake.calls()[-1]["model"] == "up-" + model


# -- retries ----------------------------------------------------------------------------------------------------------


def test_retry_after_a_server_error(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"status": 500}, {"text": "recovered"}])
    r = chat(s)
    assert text_of(r) == "recovered"
    assert "X-Gateway-Fallbacks" not in r.headers and r.headers["X-Gateway-Model"] == "small"
    assert len(fake.calls("up-small")) == 2
    m = s.metrics()
    assert sample(m, "aiserve_llm_retries_total", model="small") == 1
    assert sample(m, "aiserve_llm_upstream_requests_total", model="small", result="http_5xx") == 1
    assert sample(m, "aiserve_llm_upstream_requests_total", model="small", result="ok") == 1
    assert sample(m, "aiserve_llm_requests_total", target="small", outcome="ok") == 1


def test_retry_after_header_is_honoured(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"status": 429, "retry_after": 1}, {"text": "after the wait"}])
    assert text_of(chat(s)) == "after the wait"
    first, second = fake.calls("up-small")
    # the backoff alone is 50-100 ms; the upstream asked for a second. (A few ms of slack: the
    # event loop starts the wait from its cached clock, up to one loop iteration early.)
    assert second["time"] - first["time"] >= 0.99
    assert metric(s, "aiserve_llm_upstream_requests_total", model="small", result="http_429") == 1


def test_client_errors_are_not_retried(gateway, fake):
    s = gateway(fallbacks={"small": ["backup"]})
    fake.script("up-small", [{"status": 400}, {"status": 401}])
    err = assert_error(chat(s), 422, "invalid_request")
    assert "fake upstream error 400" in err["message"]
    assert len(fake.calls()) == 1                      # no second try, no fallback
    # 401 (the gateway's key is wrong there): the next model at once
    r = chat(s)
    assert text_of(r) == "ok from up-backup" and r.headers["X-Gateway-Fallbacks"] == "small:error"
    assert [c["model"] for c in fake.calls()] == ["up-small", "up-small", "up-backup"]
    m = s.metrics()
    assert sample(m, "aiserve_llm_upstream_requests_total", model="small", result="http_4xx") == 2
    assert sample(m, "aiserve_llm_retries_total", model="small") == 0


def test_attempts_are_bounded_and_no_default_reply_is_502(gateway, fake):
    s = gateway(retry={"attempts": "3", "min_wait": "50ms", "max_wait": "100ms"}, fallback={"default_reply": None})
    fake.script("up-small", [{"status": 503}])
    r = chat(s)
    err = assert_error(r, 502, "upstream_error")
    assert "503" in err["message"] and err["type"] == "upstream_error"
    assert r.headers["X-Gateway-Fallbacks"] == "small:error"
    assert len(fake.calls("up-small")) == 3
    m = s.metrics()
    assert sample(m, "aiserve_llm_retries_total", model="small") == 2
    assert sample(m, "aiserve_llm_requests_total", target="small", outcome="error") == 1


def test_errors_without_a_default_reply(gateway, fake):
    s = gateway(fallback={"default_reply": None}, retry={"attempts": "1", "min_wait": "50ms", "max_wait": "50ms"},
                breaker={"failures": "1000", "failure_ratio": "0.5", "min_requests": "4", "cooldown": "1m"})
    # a prompt that fits no model's window of the plan
    err = assert_error(chat(s, "word " * 1000), 422, "input_too_large")
    assert "context window" in err["message"] and fake.calls() == []
    # half of four calls failed: the failure ratio opens the breaker; then 503
    fake.script("up-small", [{"text": "a"}, {"status": 500}, {"text": "b"}, {"status": 500}])
    assert [chat(s, "q%d" % i).status_code for i in range(4)] == [200, 502, 200, 502]
    assert metric(s, "aiserve_llm_breaker_state", model="small") == 2
    r = chat(s, "q4")
    assert_error(r, 503, "upstream_unavailable")
    assert r.headers["X-Gateway-Fallbacks"] == "small:breaker_open" and len(fake.calls()) == 4


# -- fallbacks --------------------------------------------------------------------------------------------------------


def test_fallback_models_answer(gateway, fake):
    routes = [{"name": "safe", "simple": "small", "complex": "huge", "fallbacks": ["backup"]}]
    s = gateway(fallbacks={"small": ["big"]}, routes=routes)
    fake.script("up-small", [{"status": 500}])
    fake.script("up-big", [{"status": 502}])
    fake.script("up-backup", [{"text": "from backup"}])
    # the chosen model, its own fallbacks, then the route's
    r = chat(s, model="safe")
    assert text_of(r) == "from backup" and r.json()["model"] == "backup"
    assert r.headers["X-Gateway-Model"] == "backup"
    assert r.headers["X-Gateway-Fallbacks"] == "small:error,big:error"
    assert [c["model"] for c in fake.calls()] == ["up-small", "up-small", "up-big", "up-big", "up-backup"]
    m = s.metrics()
    assert sample(m, "aiserve_llm_requests_total", target="safe", outcome="fallback") == 1
    assert sample(m, "aiserve_llm_fallbacks_total", model="small", reason="error") == 1
    assert sample(m, "aiserve_llm_fallbacks_total", model="big", reason="error") == 1


def test_context_length_error_moves_to_a_larger_window(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"status": 400, "context": True}])
    fake.script("up-big", [{"text": "from big"}])
    r = chat(s)
    # the cheapest model with a larger window (big, not huge; backup's window is unknown)
    assert text_of(r) == "from big" and r.headers["X-Gateway-Model"] == "big"
    assert r.headers["X-Gateway-Fallbacks"] == "small:context_window"
    assert [c["model"] for c in fake.calls()] == ["up-small", "up-big"]     # no retry of the same window
    assert metric(s, "aiserve_llm_fallbacks_total", model="small", reason="context_window") == 1


def test_prompt_too_long_for_a_window_is_skipped_without_a_call(gateway, fake):
    s = gateway(fallbacks={"small": ["big"]})
    r = chat(s, "word " * 1000)                          # about 1250 tokens; small's window is 1000
    assert text_of(r) == "ok from up-big"
    assert r.headers["X-Gateway-Fallbacks"] == "small:context_window"
    assert fake.calls("up-small") == []
    # max_tokens counts too: a short prompt asking for 2000 tokens does not fit
    r = chat(s, "hi", max_tokens=2000)
    assert r.headers["X-Gateway-Model"] == "big" and fake.calls("up-small") == []


def test_default_reply_when_everything_fails(gateway, fake):
    s = gateway(fallbacks={"small": ["backup"]})
    fake.script("up-small", [{"status": 500}])
    fake.script("up-backup", [{"status": 503}])
    r = chat(s)
    assert text_of(r) == DEFAULT_REPLY and r.json()["model"] == "small"
    assert r.headers["X-Gateway-Fallbacks"] == "small:error,backup:error,small:default_reply"
    assert "X-Gateway-Model" not in r.headers and "X-Cache" not in r.headers
    assert len(fake.calls()) == 4
    # a stream gets it as a stream
    r, events = stream(s)
    assert content_of(events) == DEFAULT_REPLY
    assert all(c["model"] == "small" for c in chunks_of(events))
    assert r.headers["X-Gateway-Fallbacks"].endswith(",small:default_reply")
    assert metric(s, "aiserve_llm_requests_total", target="small", outcome="default_reply") == 2


def test_stale_cached_answer_when_everything_fails(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"text": "fresh answer"}, {"text": "another answer"}, {"status": 500}])
    assert text_of(chat(s, temperature=0.7)) == "fresh answer"
    # not deterministic: the same request goes upstream again (and is cached again)
    r = chat(s, temperature=0.7)
    assert text_of(r) == "another answer" and r.headers["X-Cache"] == "MISS"
    r = chat(s, temperature=0.7)
    assert text_of(r) == "another answer"
    assert r.headers["X-Cache"] == "STALE"
    assert r.headers["X-Gateway-Fallbacks"] == "small:error,small:stale_cache"
    assert len(fake.calls()) == 4
    # another request has no stale answer: the default reply
    assert text_of(chat(s, "something else", temperature=0.7)) == DEFAULT_REPLY
    assert metric(s, "aiserve_llm_requests_total", target="small", outcome="stale_cache") == 1


def test_timeouts(gateway, fake):
    # a provider's timeout is a failed try (a plain answer: the whole answer; a stream: its first byte)
    s = gateway(fallbacks={"small": ["backup"]}, provider={"timeout": "300ms"})
    fake.script("up-small", [{"delay": 1}])
    r = chat(s)
    assert text_of(r) == "ok from up-backup" and r.headers["X-Gateway-Fallbacks"] == "small:timeout"
    r, events = stream(s)
    assert content_of(events) == "ok from up-backup" and r.headers["X-Gateway-Fallbacks"] == "small:timeout"
    assert metric(s, "aiserve_llm_upstream_requests_total", model="small", result="timeout") == 4
    # the deadline covers the whole request: 504 once it passed, without waiting for the upstream
    s = gateway(deadline="500ms", fallback={"default_reply": None})
    fake.script("up-small", [{"delay": 3}])
    r = chat(s, "too slow")
    err = assert_error(r, 504, "upstream_timeout")
    assert "deadline" in err["message"] and r.headers["X-Gateway-Fallbacks"] == "small:timeout"
    assert fake.calls()[-1]["outcome"] is None           # the upstream had not answered yet


# -- circuit breaker --------------------------------------------------------------------------------------------------


def open_breakers(s):
    return s.get("/health").json()["dependencies"]["llm_upstreams"]["open_breakers"]


def test_breaker_opens_probes_and_closes(gateway, fake):
    s = gateway(retry={"attempts": "1", "min_wait": "50ms", "max_wait": "100ms"},
                breaker={"failures": "2", "failure_ratio": "0", "cooldown": "300ms"})
    fake.script("up-small", [{"status": 500}])
    state = lambda: metric(s, "aiserve_llm_breaker_state", model="small")  # noqa: E731
    assert text_of(chat(s)) == DEFAULT_REPLY and state() == 0
    assert text_of(chat(s)) == DEFAULT_REPLY and state() == 2         # two failures in a row: open
    health = s.get("/health").json()
    assert health["status"] == "degraded"
    assert health["dependencies"]["llm_upstreams"] == {"status": "degraded", "models": 4, "open_breakers": 1}
    r = chat(s)
    assert text_of(r) == DEFAULT_REPLY
    assert r.headers["X-Gateway-Fallbacks"] == "small:breaker_open,small:default_reply"
    assert len(fake.calls()) == 2                      # skipped without a network call
    # after the cooldown one probe goes through; it fails: open again
    wait_until(lambda: open_breakers(s) == 0, 10, "the cooldown to end")
    r = chat(s)
    assert r.headers["X-Gateway-Fallbacks"] == "small:error,small:default_reply"
    assert len(fake.calls()) == 3 and state() == 2
    # the next probe succeeds: closed; while it is out (half-open) no other call goes upstream
    fake.script("up-small", [{"delay": 0.5, "text": "back again"}])
    wait_until(lambda: open_breakers(s) == 0, 10, "the second cooldown to end")
    with ThreadPoolExecutor(1) as pool:
        probe = pool.submit(chat, s)
        wait_until(lambda: len(fake.calls()) == 4, 10, "the probe to reach the upstream")
        assert state() == 1
        r = chat(s)
        assert r.headers["X-Gateway-Fallbacks"] == "small:breaker_open,small:default_reply"
        r = probe.result()
    assert text_of(r) == "back again" and r.headers["X-Gateway-Model"] == "small"
    assert len(fake.calls()) == 4 and state() == 0
    assert s.get("/health").json()["status"] == "healthy"
    assert metric(s, "aiserve_llm_fallbacks_total", model="small", reason="breaker_open") == 2


# -- cache ------------------------------------------------------------------------------------------------------------


def test_cache_hit_bypass_and_stream_from_cache(gateway, fake):
    s = gateway(routes=[{"name": "sticky", "simple": "small", "complex": "big", "cache": "always"}])
    fake.script("up-small", [{"text": "first answer"}, {"text": "second answer"}])
    r = chat(s, temperature=0)
    assert text_of(r) == "first answer" and r.headers["X-Cache"] == "MISS"
    r = chat(s, temperature=0)
    assert text_of(r) == "first answer" and r.headers["X-Cache"] == "HIT"
    assert r.headers["X-Gateway-Model"] == "small" and r.json()["model"] == "small"
    assert len(fake.calls()) == 1
    # Cache-Control: no-cache goes upstream; its fresh answer is stored
    r = chat(s, temperature=0, headers={"Cache-Control": "no-cache"})
    assert text_of(r) == "second answer" and r.headers["X-Cache"] == "MISS"
    assert len(fake.calls()) == 2
    # a streamed request gets the cached answer as a stream, with usage when asked
    r, events = stream(s, temperature=0, stream_options={"include_usage": True})
    assert r.headers["X-Cache"] == "HIT" and content_of(events) == "second answer"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "small" for c in chunks_of(events))
    assert [c["usage"] for c in chunks_of(events) if c.get("usage")] == [chat(s, temperature=0).json()["usage"]]
    assert len(fake.calls()) == 2
    # other parameters are another answer
    assert chat(s, temperature=0, max_tokens=7).headers["X-Cache"] == "MISS"
    # and the other way round: a streamed answer is cached whole for a plain request
    fake.script("up-small", [{"chunks": ["stre", "amed"]}])
    _, events = stream(s, "another question", temperature=0)
    r = chat(s, "another question", temperature=0)
    assert text_of(r) == "streamed" and r.headers["X-Cache"] == "HIT"
    assert r.json()["choices"][0]["finish_reason"] == "stop" and r.json()["model"] == "small"
    assert len(fake.calls()) == 4
    # Pragma: no-cache as well
    assert chat(s, "another question", temperature=0, headers={"Pragma": "no-cache"}).headers["X-Cache"] == "MISS"
    # a route with cache: always serves answers that are not deterministic too
    assert chat(s, "a third", model="sticky", temperature=0.9).headers["X-Cache"] == "MISS"
    r = chat(s, "a third", model="sticky", temperature=0.9)
    assert r.headers["X-Cache"] == "HIT" and r.headers["X-Gateway-Model"] == "small"
    assert len(fake.calls()) == 6
    m = s.metrics()
    assert sample(m, "aiserve_llm_cache_requests_total", result="hit") == 5
    assert sample(m, "aiserve_llm_cache_requests_total", result="bypass") == 2


# -- guardrails -------------------------------------------------------------------------------------------------------


def test_output_guardrail_blocks_ssn_and_card_numbers(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"text": "Sure: your SSN is 123-45-6789."},
                             {"text": "Pay with 4111 1111 1111 1111 please"},
                             {"text": "Order 4111111111111112 has shipped"},       # fails the Luhn check
                             {"chunks": ["my ssn is 123-4", "5-6789 ok"]},
                             {"chunks": ["card 4111-1111-", "1111-1111 ok"]},
                             {"chunks": ["nothing to ", "hide here"]},
                             {"choices": [["hello ", "world"], ["my ssn is ", "123-45-6789"]]}])
    assert text_of(chat(s)) == FILTERED
    assert text_of(chat(s)) == FILTERED
    assert text_of(chat(s)) == "Order 4111111111111112 has shipped"
    for pieces in (("123-4", "6789"), ("4111-1111-", "1111-1111")):   # split across two chunks
        r, events = stream(s)
        assert content_of(events).endswith(FILTERED)
        assert not [p for p in pieces if p in r.text], r.text
    r, events = stream(s)
    assert content_of(events) == "nothing to hide here"
    # several choices: each filtered on its own
    r = chat(s, n=2)
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["hello world", FILTERED]
    m = s.metrics()
    assert sample(m, "aiserve_llm_guardrail_matches_total", direction="output", type="ssn", action="block") == 3
    assert sample(m, "aiserve_llm_guardrail_matches_total", direction="output", type="card", action="block") == 2


def test_input_guardrails_redact_and_block(gateway, fake):
    s = gateway(guardrails={"input": {"email": "redact", "ssn": "block"}})
    assert chat(s, "mail me at jane.doe@example.com today").status_code == 200
    assert fake.calls()[-1]["body"]["messages"] == user("mail me at [REDACTED:email] today")
    parts = [{"type": "text", "text": "and bob@example.org"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert s.post(CHAT, json={"model": "small", "messages": user(parts)}).status_code == 200
    assert fake.calls()[-1]["body"]["messages"][0]["content"][0]["text"] == "and [REDACTED:email]"
    err = assert_error(chat(s, "my ssn is 123-45-6789"), 422, "input_blocked")
    assert "ssn" in err["message"]
    assert len(fake.calls()) == 2                      # the blocked one never went upstream
    m = s.metrics()
    assert sample(m, "aiserve_llm_guardrail_matches_total", direction="input", type="email", action="redact") == 2
    assert sample(m, "aiserve_llm_guardrail_matches_total", direction="input", type="ssn", action="block") == 1


# -- streams that end early -------------------------------------------------------------------------------------------


def test_client_leaving_mid_stream_cancels_the_upstream(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"chunks": ["tick "] * 200, "chunk_delay": 0.05}])   # a 10 s answer
    with send_chat(s, {"model": "small", "stream": True, "messages": user("count slowly")}) as c:
        got = b""
        while b"tick" not in got:
            data = c.recv(65536)
            assert data, got
            got += data
    assert got.startswith(b"HTTP/1.1 200")
    (up,) = fake.calls()
    # the gateway closed its upstream connection long before the answer's 10 s
    assert outcome(up) == "client_gone"
    s.wait_log("llm_request", outcome="client_gone", timeout=5)
    fake.script("up-small", [{"text": "still serving"}])
    assert text_of(chat(s)) == "still serving"


def test_upstream_dying_mid_stream(gateway, fake):
    s = gateway(fallbacks={"small": ["backup"]})
    fake.script("up-small", [{"chunks": ["one ", "two ", "three"], "die_after": 2}])
    r, events = stream(s)
    errors = [e for e in events[:-1] if "error" in e]
    assert len(errors) == 1 and events[-2] is errors[0]          # the error event, then [DONE]
    assert errors[0]["error"]["code"] == "upstream_stream_broken"
    assert errors[0]["error"]["type"] == "upstream_error" and errors[0]["error"]["message"]
    assert content_of(events) == "one two "
    assert fake.calls("up-backup") == []               # the client had part of it: no fallback
    assert outcome(fake.calls()[0]) == "died"
    assert metric(s, "aiserve_llm_requests_total", target="small", outcome="error") == 1


def test_upstream_error_event_mid_stream(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"chunks": ["one ", "two ", "three"], "error_after": 2}, {"text": "a whole answer"}])
    r, events = stream(s, temperature=0)
    assert outcome(fake.calls()[0]) == "error_event"
    errors = [e for e in events[:-1] if "error" in e]
    assert len(errors) == 1 and events[-2] is errors[0]
    assert errors[0]["error"]["type"] == "upstream_error"
    assert content_of(events) == "one two "
    assert metric(s, "aiserve_llm_requests_total", target="small", outcome="error") == 1
    # the broken answer was not cached
    assert text_of(chat(s, temperature=0)) == "a whole answer"


def test_stream_with_several_choices_is_filtered_per_choice(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"choices": [["hello ", "world"], ["my ssn is 123-4", "5-6789 ok"]]}])
    r, events = stream(s, n=2)
    texts = {}
    for c in chunks_of(events):
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert "123-4" not in r.text and "6789" not in r.text
    assert texts[0] == "hello world" and texts[1].endswith(FILTERED)


def test_blocked_stream_still_finishes(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"chunks": ["my ssn is 123-4", "5-6789 ok"]}])
    r, events = stream(s)
    assert content_of(events).endswith(FILTERED)
    finish = [ch["finish_reason"] for c in chunks_of(events) for ch in c["choices"] if ch.get("finish_reason")]
    assert len(finish) == 1


def test_upstream_ignoring_stream_is_still_a_stream(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"ignore_stream": True, "text": "a whole answer"}])
    r, events = stream(s)
    assert content_of(events) == "a whole answer"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "small" for c in chunks_of(events))


def test_client_leaving_a_plain_call_cancels_the_upstream(gateway, fake):
    s = gateway()
    fake.script("up-small", [{"delay": 1.5, "text": "nobody reads this"}])
    with send_chat(s, {"model": "small", "messages": user("slow")}):
        wait_until(lambda: fake.calls() or None, 5, "the upstream call to start")
    (done,) = wait_until(lambda: s.logs("llm_request") or None, 5, "the call to end")
    assert done["outcome"] == "client_gone"
    assert metric(s, "aiserve_llm_requests_total", target="small", outcome="ok") == 0


def test_stream_failing_before_its_first_chunk_falls_back(gateway, fake):
    s = gateway(fallbacks={"small": ["backup"]})
    fake.script("up-small", [{"drop": True}])
    fake.script("up-backup", [{"chunks": ["from ", "backup"]}])
    r, events = stream(s)
    assert content_of(events) == "from backup"
    assert all(c["model"] == "backup" for c in chunks_of(events))
    assert r.headers["X-Gateway-Model"] == "backup" and r.headers["X-Gateway-Fallbacks"] == "small:error"
    assert len(fake.calls("up-small")) == 2


# -- bad input, garbage ------------------------------------------------------------------------------------------------


def test_bad_requests(gateway, fake):
    s = gateway("--max-body-size", "4KiB", limits={"max_messages": "3", "max_chars": "100"})
    cases = [
        ({"model": "small"}, 422, "invalid_request", "messages"),
        ({"model": "small", "messages": []}, 422, "invalid_request", "messages"),
        ({"model": "small", "messages": [{"role": "robot", "content": "hi"}]}, 422, "invalid_request",
         "messages[0].role"),
        ({"model": "small", "messages": [{"role": "user"}]}, 422, "invalid_request", "messages[0].content"),
        ({"messages": user("hi")}, 422, "invalid_request", "model"),
        ({"model": "small", "messages": user("hi"), "temperature": 3}, 422, "invalid_request", "temperature"),
        ({"model": "nope", "messages": user("hi")}, 404, "model_not_found", "nope"),
        ({"model": "small", "messages": user("hi") * 4}, 422, "input_too_large", "4 messages"),
        ({"model": "small", "messages": user("x" * 101)}, 422, "input_too_large", "101 characters"),
    ]
    for body, status, code, fragment in cases:
        err = assert_error(s.post(CHAT, json=body), status, code)
        assert fragment in err["message"], (body, err)
    assert_error(s.post(CHAT, data=b'{"model": "small", "messages": [{"role": "user", "content": "\xff"}]}'),
                 400, "invalid_utf8")
    assert_error(s.post(CHAT, data=b'{"model": "small", '), 400, "invalid_json")
    assert_error(chat(s, "x" * 5000), 413, "body_too_large")
    r = s.get(CHAT)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    assert fake.calls() == []
    assert text_of(chat(s)) == "ok from up-small"       # still serving


def test_without_a_gateway_configured(server_factory):
    s = server_factory()
    err = assert_error(s.post(CHAT, json={"model": "small", "messages": user("hi")}), 404, "gateway_not_configured")
    assert "gateway" in err["message"]


def test_garbage_and_oversized_answers_are_failed_tries(gateway, fake):
    s = gateway(retry={"attempts": "5", "min_wait": "50ms", "max_wait": "100ms"},
                limits={"max_response_size": "1KiB"})
    fake.script("up-small", [{"garbage": b"<html>502 Bad Gateway</html>"},
                             {"garbage": b'{"not": "a completion"}'},
                             {"text": "x" * 2000},                   # over max_response_size
                             {"status": 302},                        # a redirect is not followed
                             {"text": "fine"}])
    assert text_of(chat(s)) == "fine"
    assert len(fake.calls()) == 5
    m = s.metrics()
    assert sample(m, "aiserve_llm_upstream_requests_total", model="small", result="invalid") == 4
    assert sample(m, "aiserve_llm_retries_total", model="small") == 4
    # a stream event over the limit ends the stream with an error event
    fake.script("up-small", [{"chunks": ["fine ", "y" * 2000]}])
    r, events = stream(s)
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "upstream_stream_broken" and "max_response_size" in error["error"]["message"]
    assert content_of(events) == "fine " and "yyyy" not in r.text
    assert s.alive()


# -- the official client ----------------------------------------------------------------------------------------------


def run_openai_js(s, client_dir, model, mode):
    env = dict(os.environ, NODE_PATH=str(client_dir / "node_modules"))
    p = subprocess.run(["node", os.path.join(HERE, "js", "openai_chat.js"), s.url(""), model,
                        json.dumps(user("hi")), mode], capture_output=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_official_openai_client(gateway, fake, openai_client_dir):  # noqa: F811
    s = gateway()
    fake.script("up-small", [{"text": "Hello from the gateway."}])
    res = run_openai_js(s, openai_client_dir, "small", "plain")
    assert res["model"] == "small" and res["choices"][0]["message"]["content"] == "Hello from the gateway."
    assert res["usage"]["total_tokens"] > 0
    res = run_openai_js(s, openai_client_dir, "auto", "stream")
    chunks = res["chunks"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        "Hello from the gateway."
    assert all(c["model"] == "small" for c in chunks) and chunks[-1]["usage"]["total_tokens"] > 0
    assert "error" not in res
    # an error in the one error shape is read by the client as OpenAI's
    res = run_openai_js(s, openai_client_dir, "nope", "plain")
    assert res["error"] == {"status": 404, "code": "model_not_found", "type": "invalid_request_error"}
    # an upstream dying mid-stream: the client gets the first chunks, then raises the in-band error
    fake.script("up-big", [{"chunks": ["partial ", "answer ", "lost"], "die_after": 2}])
    res = run_openai_js(s, openai_client_dir, "big", "stream")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in res["chunks"] if c["choices"]) == \
        "partial answer "
    assert res["error"]["code"] == "upstream_stream_broken"


# -- API keys ---------------------------------------------------------------------------------------------------------


def test_api_key_scopes_cost_and_tokens(gateway, fake, tmp_path):
    keys = tmp_path / "keys.json"
    chatter = create_key(keys, "chatter", "chat")
    predictor = create_key(keys, "predictor", "predict")
    s = gateway("--keys-file", str(keys))
    assert_error(chat(s), 401, "missing_api_key")
    assert_error(chat(s, headers={"X-API-Key": predictor}), 403, "insufficient_scope")
    assert fake.calls() == []
    fake.script("up-small", [{"text": "a priced answer"}])
    r = chat(s, headers={"Authorization": "Bearer " + chatter})
    usage = r.json()["usage"]
    _, events = stream(s, headers={"X-API-Key": chatter})      # usage not asked for, counted all the same
    assert content_of(events) == "a priced answer"
    up = fake.calls()[0]["headers"]
    assert up["Authorization"] == "Bearer " + KEY and "X-API-Key" not in up     # the provider's key upstream
    m = s.metrics()
    prompt, completion = 2 * usage["prompt_tokens"], 2 * usage["completion_tokens"]
    assert sample(m, "aiserve_llm_tokens_total", model="small", key="chatter", kind="prompt") == prompt
    assert sample(m, "aiserve_llm_tokens_total", model="small", key="chatter", kind="completion") == completion
    cost = sample(m, "aiserve_llm_cost_usd_total", model="small", key="chatter")
    assert cost == pytest.approx((prompt * 0.5 + completion * 1.5) / 1e6, rel=1e-9)
    assert sample(m, "aiserve_llm_cost_usd_total", model="small", key="anonymous") == 0


def test_a_server_that_is_only_a_gateway_is_ready(gateway, fake, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    s = gateway(repo=empty)                      # started waits for /health/ready: it must come
    for path in ("/health/ready", "/v2/health/ready"):
        assert s.get(path).status_code == 200, path
    health = s.get("/health").json()
    assert health["status"] == "healthy" and health["models"] == {}
    assert health["dependencies"]["llm_upstreams"]["status"] == "up"
    fake.script("up-small", [{"text": "only a gateway"}])
    assert text_of(chat(s)) == "only a gateway"
