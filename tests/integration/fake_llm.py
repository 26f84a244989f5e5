"""fake_llm.py - a fake upstream LLM for the gateway's tests, faithful to
the OpenAI chat-completions wire format (POST /v1/chat/completions, JSON or
server-sent events with chat.completion.chunk objects, a final usage chunk
when stream_options.include_usage, then data: [DONE]).

Hosted LLM APIs cannot run here, so this stands in for them. Each upstream
model answers from a script: a list of steps, one per request, the last
repeated; a step is a dict:

    {"text": "hello"}                        a completion (streamed when asked)
    {"status": 500} / {"status": 429, "retry_after": 1}
    {"status": 400, "context": True}          OpenAI's context_length_exceeded error
    {"delay": 0.5}                            seconds before the head
    {"chunks": ["hel", "lo"]}                 the stream's content pieces
    {"choices": [["a", "b"], ["c", "d"]]}     n choices, each its content pieces (a stream
                                              interleaves them: a, c, b, d, as OpenAI does)
    {"chunk_delay": 0.05}                     seconds between stream events
    {"die_after": 2}                          close the socket after 2 content chunks
    {"error_after": 2}                        after 2 content chunks, an error event
                                              (data: {"error": {...}}) and the end of the body
    {"ignore_stream": True}                   a whole JSON answer even to a stream request
    {"drop": True}                            close the socket without answering
    {"garbage": b"..."}                       this body instead of JSON, status 200
    {"usage": False}                          no usage reported
    {"sse_split": 3}                          write the stream in pieces of 3 bytes

Streams are sent with Transfer-Encoding: chunked, as OpenAI's API sends
them over HTTP/1.1, so an upstream that dies mid-stream (die_after) is a
truncated body, not a complete one.

Every request is recorded (model, body, headers, path, time of arrival on
the monotonic clock, and outcome: "answered" for a whole answer, or for a
stream "complete"; "client_gone" when writing to the caller failed, "died"
after die_after, "error_event" after error_after, "dropped"; None for an
error status or garbage) for assertions. Runs on loopback in a thread of
the test process; stop() closes it.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    default_text = "ok from %s"  # a model without a script answers this

    def __init__(self):
        self.scripts = {}
        self.requests = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def script(self, model, steps):
        with self.lock:
            self.scripts[model] = list(steps)

    def calls(self, model=None):
        with self.lock:
            return [r for r in self.requests if model is None or r["model"] == model]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _outcome(self, record, outcome):
        with self.lock:
            record["outcome"] = outcome

    def _next_step(self, model):
        with self.lock:
            steps = self.scripts.get(model) or [{"text": self.default_text % model}]
            step = steps.pop(0) if len(steps) > 1 else steps[0]
            self.scripts[model] = steps
            return dict(step)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                model = body.get("model", "")
                record = {"model": model, "body": body, "headers": dict(self.headers), "path": self.path,
                          "time": time.monotonic(), "outcome": None}
                with fake.lock:
                    fake.requests.append(record)
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
                step = fake._next_step(model)
                time.sleep(step.get("delay", 0))
                if step.get("drop"):
                    fake._outcome(record, "dropped")
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status = step.get("status", 200)
                if status != 200:
                    if step.get("context"):
                        err = {"message": "This model's maximum context length is 4097 tokens. However, your "
                                          "messages resulted in 5000 tokens.", "type": "invalid_request_error",
                               "param": "messages", "code": "context_length_exceeded"}
                    else:
                        err = {"message": "fake upstream error %d" % status, "type": "server_error"}
                    headers = {}
                    if "retry_after" in step:
                        headers["Retry-After"] = str(step["retry_after"])
                    return self._json(status, {"error": err}, headers)
                if "garbage" in step:
                    return self._raw(200, "application/json", step["garbage"])
                text = step.get("text", "ok from %s" % model)
                choices = step.get("choices") or [step.get("chunks") or
                                                  [text[i:i + 4] for i in range(0, len(text), 4)] or [""]]
                texts = ["".join(pieces) for pieces in choices]
                prompt_tokens = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
                completion_tokens = sum(len(t) // 4 + 1 for t in texts)
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                if body.get("stream") and not step.get("ignore_stream"):
                    return fake._outcome(record, self._stream(model, step, choices, usage, body))
                out = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
                       "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                    "finish_reason": "stop"} for i, t in enumerate(texts)]}
                if step.get("usage", True):
                    out["usage"] = usage
                fake._outcome(record, "answered" if self._json(200, out) else "client_gone")

            def _stream(self, model, step, choices, usage, body):
                """Writes the stream; returns how it ended (the record's outcome)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                        "model": model}

                def chunk(i, delta, finish=None):
                    return dict(base, choices=[{"index": i, "delta": delta, "finish_reason": finish}])

                n = len(choices)
                events = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]   # the role chunks
                content = [chunk(i, {"content": pieces[j]}) for j in range(max(map(len, choices)))
                           for i, pieces in enumerate(choices) if j < len(pieces)]
                events += content + [chunk(i, {}, "stop") for i in range(n)]
                include = (body.get("stream_options") or {}).get("include_usage")
                if include and step.get("usage", True):
                    events.append(dict(base, choices=[], usage=usage))
                data = [("data: " + json.dumps(e) + "\n\n").encode() for e in events] + [b"data: [DONE]\n\n"]
                split = step.get("sse_split")

                def write(d):
                    pieces = [d[k:k + split] for k in range(0, len(d), split)] if split else [d]
                    for p in pieces:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
                        self.wfile.flush()

                try:
                    for i, d in enumerate(data):
                        sent_content = min(max(i - n, 0), len(content))
                        if i >= n and sent_content >= step.get("die_after", float("inf")):
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return "died"
                        if i >= n and sent_content >= step.get("error_after", float("inf")):
                            write(b'data: {"error": {"message": "fake stream error", "type": "server_error", '
                                  b'"param": null, "code": null}}\n\n')
                            self.wfile.write(b"0\r\n\r\n")
                            return "error_event"
                        write(d)
                        time.sleep(step.get("chunk_delay", 0))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return "client_gone"
                return "complete"

            def _json(self, status, obj, headers=None):
                return self._raw(status, "application/json", json.dumps(obj).encode(), headers)

            def _raw(self, status, ctype, data, headers=None):
                """Sends one whole answer; False when the caller had gone."""
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return False

        return Handler
