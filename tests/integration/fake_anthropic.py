"""fake_anthropic.py - a fake of Anthropic's Messages API for the gateway's
tests (POST /v1/messages with x-api-key and anthropic-version headers; JSON
answers or server-sent events: message_start, content_block_start, ping,
content_block_delta text_delta, content_block_stop, message_delta with
stop_reason and output_tokens, message_stop; errors as {"type": "error",
"error": {"type", "message"}}, 529 overloaded_error included).

Hosted APIs cannot run here, so this stands in for Anthropic, faithful to
its documented wire format. Steps per model as in fake_llm.py:
{"text": ...}, {"status": 529}, {"status": 400, "context": True},
{"chunks": [...]}, {"stream_error": True} (an error event mid-stream),
{"stop_reason": "max_tokens"}, {"tool_use": {"id", "name", "input"}} (the
answer calls a tool; streamed as a tool_use block whose input arrives in
input_json_delta pieces). Every request is recorded (FakeLLM's
scripting and recording, this file's wire format).
"""

import json
from http.server import BaseHTTPRequestHandler

from fake_llm import FakeLLM


class FakeAnthropic(FakeLLM):
    """FakeLLM's scripts, recording and lifetime; Anthropic's wire format."""

    default_text = "hello from %s"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                model = body.get("model", "")
                with fake.lock:
                    fake.requests.append({"model": model, "body": body, "headers": dict(self.headers),
                                          "path": self.path})
                if self.path != "/v1/messages":
                    return self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                                       "message": "no such path"}})
                if not self.headers.get("x-api-key") or not self.headers.get("anthropic-version"):
                    return self._json(401, {"type": "error", "error": {"type": "authentication_error",
                                                                       "message": "missing x-api-key"}})
                if "max_tokens" not in body:
                    return self._json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                       "message": "max_tokens: Field required"}})
                step = fake._next_step(model)
                status = step.get("status", 200)
                if status != 200:
                    if step.get("context"):
                        msg = "prompt is too long: 210000 tokens > 200000 maximum"
                        kind = "invalid_request_error"
                    else:
                        msg, kind = "Overloaded", "overloaded_error" if status == 529 else "api_error"
                    return self._json(status, {"type": "error", "error": {"type": kind, "message": msg}})
                text = step.get("text", fake.default_text % model)
                in_tokens = sum(len(json.dumps(m.get("content"))) for m in body.get("messages", [])) // 4 + 1
                out_tokens = len(text) // 4 + 1
                stop_reason = step.get("stop_reason", "end_turn")
                tool = step.get("tool_use")
                if tool:
                    stop_reason = "tool_use"
                if body.get("stream"):
                    return self._stream(model, step, text, in_tokens, out_tokens, stop_reason)
                content = [{"type": "text", "text": text}] if text else []
                if tool:
                    content.append(dict(tool, type="tool_use"))
                self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                                 "content": content, "stop_reason": stop_reason,
                                 "stop_sequence": None,
                                 "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens}})

            def _stream(self, model, step, text, in_tokens, out_tokens, stop_reason):
                chunks = step.get("chunks") or [text[i:i + 5] for i in range(0, len(text), 5)]
                events = [("message_start", {"type": "message_start", "message": {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "usage": {"input_tokens": in_tokens, "output_tokens": 1}}}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("ping", {"type": "ping"})]
                for i, c in enumerate(chunks):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                           "delta": {"type": "text_delta", "text": c}}))
                    if step.get("stream_error") and i == 0:
                        events.append(("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                            "message": "Overloaded"}}))
                        break
                else:
                    tool = step.get("tool_use")
                    if tool:
                        args = json.dumps(tool["input"])
                        events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                                   ("content_block_start", {"type": "content_block_start", "index": 1,
                                                            "content_block": {"type": "tool_use", "id": tool["id"],
                                                                              "name": tool["name"], "input": {}}})]
                        for k in range(0, len(args), 7):
                            events.append(("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                                   "delta": {"type": "input_json_delta",
                                                                             "partial_json": args[k:k + 7]}}))
                    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                               ("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                                  "usage": {"output_tokens": out_tokens}}),
                               ("message_stop", {"type": "message_stop"})]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for name, data in events:
                    self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())
                    self.wfile.flush()
                self.close_connection = True

            def _json(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
