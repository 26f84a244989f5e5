"""test_gateway_anthropic.py - the gateway in front of an Anthropic-kind
provider (a fake of the Messages API: fake_anthropic.py): clients keep
speaking OpenAI's chat-completions format, plain and streamed; the upstream
gets a Messages request (system joined, max_tokens always, x-api-key,
anthropic-version, temperature capped at 1, stop -> stop_sequences); a 529
overloaded answer is retried; an error event mid-stream ends the client's
stream with an in-band error; tool calls go both ways (tools and
tool_choice translated, tool_use blocks answered as tool_calls, streamed in
pieces, tool results sent back as tool_result blocks); what does not
translate (response_format, n > 1) is refused with 422.
"""

import json

import pytest
import requests

from fake_anthropic import FakeAnthropic


@pytest.fixture
def fake():
    f = FakeAnthropic()
    yield f
    f.stop()


@pytest.fixture
def gateway(server_factory, fake, tmp_path):
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("""
providers:
  - {name: anthropic, kind: anthropic, base_url: %s, api_key_env: TEST_ANTHROPIC_KEY, timeout: 5s}
models:
  - {name: claude, provider: anthropic, upstream_model: claude-test-1, input_price: 3, output_price: 15,
     context_window: 200000}
retry: {attempts: 3, min_wait: 10ms, max_wait: 20ms}
budgets: {reserve_tokens: 256}
""" % fake.base_url)
    return server_factory("--gateway-config", str(cfg), env={"TEST_ANTHROPIC_KEY": "sk-ant-test"})


def chat(s, body, **kw):
    return requests.post(s.url("/v1/chat/completions"), json=body, timeout=30, **kw)


def sse_events(text):
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def test_plain_answer_is_translated_both_ways(gateway, fake):
    fake.script("claude-test-1", [{"text": "Bonjour, monde", "stop_reason": "max_tokens"}])
    r = chat(gateway, {"model": "claude", "temperature": 1.7, "stop": "END",
                       "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "developer", "content": "Answer in French."},
                                    {"role": "user", "content": "Hello"},
                                    {"role": "user", "content": [{"type": "text", "text": "world"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "claude"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Bonjour, monde"}
    assert body["choices"][0]["finish_reason"] == "length"
    up = fake.calls("claude-test-1")[-1]
    assert up["headers"]["x-api-key"] == "sk-ant-test"
    assert up["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in up["headers"]
    sent = up["body"]
    assert sent["system"] == "Be brief.\n\nAnswer in French."
    assert sent["max_tokens"] == 256                     # budgets.reserve_tokens: none was asked
    assert sent["temperature"] == 1                      # Anthropic's range is 0..1
    assert sent["stop_sequences"] == ["END"]
    # Consecutive user messages are one turn.
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                             {"type": "text", "text": "world"}]}]
    assert body["usage"]["prompt_tokens"] >= 1 and body["usage"]["completion_tokens"] >= 1


def test_stream_is_translated_to_chunks(gateway, fake):
    fake.script("claude-test-1", [{"chunks": ["Hel", "lo ", "there"]}])
    r = chat(gateway, {"model": "claude", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] >= 1
    assert fake.calls("claude-test-1")[-1]["body"]["stream"] is True


def test_overloaded_is_retried(gateway, fake):
    fake.script("claude-test-1", [{"status": 529}, {"text": "after a retry"}])
    r = chat(gateway, {"model": "claude", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "after a retry"
    assert len(fake.calls("claude-test-1")) == 2


def test_error_event_mid_stream_ends_the_stream_in_band(gateway, fake):
    fake.script("claude-test-1", [{"chunks": ["partial", " more"], "stream_error": True}])
    r = chat(gateway, {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
             stream=True)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    errors = [json.loads(e) for e in events[:-1] if "error" in json.loads(e)]
    assert len(errors) == 1 and "Overloaded" in errors[0]["error"]["message"]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e).get("choices"))
    assert text == "partial"


TOOLS = [{"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}


def test_tool_use_round_trip(gateway, fake):
    fake.script("claude-test-1", [{"text": "", "tool_use": CALL}, {"text": "Sunny in Paris."}])
    r = chat(gateway, {"model": "claude", "tools": TOOLS, "tool_choice": "required",
                       "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_1" and call["type"] == "function"
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    sent = fake.calls("claude-test-1")[-1]["body"]
    assert sent["tools"] == [{"name": "weather", "description": "The weather in a city",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "any"}
    # The result goes back as the client would send it.
    r = chat(gateway, {"model": "claude", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "22 C, sunny"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Sunny in Paris."
    sent = fake.calls("claude-test-1")[-1]["body"]
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]}
    assert sent["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "22 C, sunny"}]}]}


def test_streamed_tool_call_arrives_in_pieces(gateway, fake):
    fake.script("claude-test-1", [{"text": "Let me look.", "tool_use": CALL}])
    r = chat(gateway, {"model": "claude", "stream": True, "tools": TOOLS,
                       "messages": [{"role": "user", "content": "Weather in Paris?"}]}, stream=True)
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "weather"
    assert all(tc["index"] == 0 for tc in calls)
    args = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert json.loads(args) == {"city": "Paris"}
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    assert finish == ["tool_calls"]


def test_what_does_not_translate_is_refused(gateway, fake):
    before = len(fake.calls())
    for extra, param in (({"response_format": {"type": "json_object"}}, "response_format"), ({"n": 2}, "n")):
        r = chat(gateway, dict({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}, **extra))
        assert r.status_code == 422, r.text
        assert "Anthropic" in r.json()["error"]["message"]
    assert len(fake.calls()) == before


def test_a_cached_tool_call_is_streamed_whole(gateway, fake):
    fake.script("claude-test-1", [{"text": "", "tool_use": CALL}])
    body = {"model": "claude", "temperature": 0, "tools": TOOLS,
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    assert chat(gateway, body).json()["choices"][0]["finish_reason"] == "tool_calls"
    r = chat(gateway, dict(body, stream=True), stream=True)
    assert r.headers["X-Cache"] == "HIT"
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    (first, last) = chunks
    call = first["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["id"] == "toolu_1"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert len(fake.calls("claude-test-1")) == 1
