"""test_openapi.py - GET /openapi.json with the real binary (test_docs_page.py
has GET /docs, which shows it): the
document lints clean with Redocly's OpenAPI linter (installed from npm into a
temporary directory); it describes exactly the route table (the rows of
src/http/routes.c, read as data); and the server answers what it documents:
every operation gets its success, and a request made to get each of a
representative set of its documented errors (400, 401, 403, 404, 409, 413,
422) gets it, with a body of the documented shape; every other method of a
documented path is 405 with Allow naming the documented ones."""

import json
import os
import re
import shutil
import subprocess

import pytest
import requests

from harness import FIXTURES, ROOT, SENTIMENT, assert_error, create_key, make_repo, wait_until

REDOCLY = "@redocly/cli@1.34.20"  # 1.x; pinned so that the lint is repeatable
SCOPES = ("predict", "embed", "batch", "chat", "admin")
METHODS = ("get", "post", "put", "delete")
GOOD_TEXT = "a gripping, beautifully made film"
NO_JOB = "batch_000000000000000000000000"

# Operations that need an LLM gateway: this server has none, and answers
# 404 (test_gateway_budgets.py has their success).
NEEDS_GATEWAY = {("get", "/v1/gateway/budgets")}

# A request body that should succeed, per request schema (the chat
# completion needs a gateway: this server has none, and answers 404).
GOOD_BODIES = {
    "PredictRequest": {"text": GOOD_TEXT},
    "EmbeddingsRequest": {"model": "minilm", "input": [GOOD_TEXT]},
    "TeiEmbedRequest": {"model": "minilm", "inputs": [GOOD_TEXT]},
    "SeedBatchRequest": [GOOD_TEXT],
    "BatchRequest": {"inputs": [GOOD_TEXT]},
    "KServeInferRequest": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [GOOD_TEXT]}]},
    "TrafficSplit": {"1": 100},
    "AliasRequest": {"version": 1},
    "ShadowRequest": {},
    "CascadeRequest": {},
    "TeiRerankRequest": {"query": "which film?", "texts": [GOOD_TEXT], "model": "reranker"},
    "RerankRequest": {"model": "reranker", "query": "which film?", "documents": [GOOD_TEXT]},
}



@pytest.fixture(scope="module")
def redocly(tmp_path_factory):
    if not shutil.which("npm") or not shutil.which("node"):
        pytest.fail("node and npm are needed (scripts/install-deps.sh installs them)")
    d = tmp_path_factory.mktemp("redocly-npm")
    p = subprocess.run(["npm", "install", "--prefix", str(d), "--no-audit", "--no-fund", "--silent", REDOCLY],
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return d / "node_modules" / ".bin" / "redocly"


@pytest.fixture
def keyed(server_factory, tmp_path):
    """A server with a key per scope, a 1 KiB body limit (413 within reach),
    a classifier and an embedding model; its document; its keys."""
    keys_file = tmp_path / "keys.json"
    keys = {scope: create_key(keys_file, scope, scope) for scope in SCOPES}
    repo = make_repo(tmp_path, sentiment=SENTIMENT, minilm=os.path.join(FIXTURES, "bert-base-embed"),
                     reranker=os.path.join(FIXTURES, "xlmr-reranker"))
    s = server_factory("--keys-file", str(keys_file), "--max-body-size", "1KiB", repo=repo)
    r = s.get("/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    return s, r.json(), keys


def operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def table_rows():
    """(method, pattern) for every row of the route table, from its source."""
    with open(os.path.join(ROOT, "src", "http", "routes.c"), encoding="utf-8") as f:
        src = f.read()
    table = src[src.index("const http_route http_routes[] = {"):]
    table = table[:table.index("\n};")]
    rows = set()
    for bits, pattern in re.findall(r'\{((?:HTTP_[A-Z]+\s*\|?\s*)+),\s*"([^"]+)"', table):
        for bit in bits.split("|"):
            rows.add((bit.strip()[len("HTTP_"):].lower(), pattern))
    assert len(rows) > 30, rows
    return rows


def test_document_lints_and_says_who_serves_it(server_factory, redocly, tmp_path):
    s = server_factory()
    r = s.get("/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert "\n" not in r.text and r.text.startswith('{"openapi":"3.1.0",')  # compact
    doc = r.json()
    assert doc["info"]["version"] == s.get("/health").json()["version"]
    assert doc["components"]["securitySchemes"] == {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"}}
    assert s.get("/openapi.json").content == r.content  # made once
    saved = tmp_path / "openapi.json"
    saved.write_bytes(r.content)
    p = subprocess.run([str(redocly), "lint", str(saved)], capture_output=True, timeout=120)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0, out[-6000:]
    assert "Your API description is valid" in out, out[-6000:]


def test_document_is_the_route_table(server_factory):
    doc = server_factory().get("/openapi.json").json()
    documented = {(method, path) for path, method, _ in operations(doc)}
    assert documented == table_rows()
    for path, method, op in operations(doc):
        assert op["summary"], (method, path)
        names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert names == set(re.findall(r"\{(\w+)\}", path)), (method, path)


def test_document_has_queries_headers_and_streams(server_factory):
    doc = server_factory().get("/openapi.json").json()
    params = lambda path, method: {(p["in"], p["name"]): p for p in doc["paths"][path][method].get("parameters", [])}
    results = params("/v1/batch/{id}/results", "get")
    assert results[("query", "limit")]["schema"] == {"type": "integer", "minimum": 1, "maximum": 10000,
                                                     "default": 1000}
    assert results[("query", "offset")]["schema"]["minimum"] == 0
    # One name, a range per route: a page of jobs is at most 100.
    jobs = params("/v1/batch", "get")
    assert set(jobs) == {("query", "limit"), ("query", "after")}
    assert jobs[("query", "limit")]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert jobs[("query", "after")]["schema"] == {"type": "string"}
    # Every inference operation takes X-Model-Version and says which version answered.
    infer = [(path, m) for path, m, op in operations(doc)
             if "Prediction" in str(op["responses"].get("200")) or path.endswith("/infer")
             or path in ("/v1/embeddings", "/embed") or path.endswith("/rerank")]
    assert len(infer) == 9, infer
    for path, m in infer:
        assert ("header", "X-Model-Version") in params(path, m), path
        assert "X-Model-Version" in doc["paths"][path][m]["responses"]["200"]["headers"], path
    assert not any(("header", "X-Model-Version") in params(path, m)
                   for path, m, _ in operations(doc) if (path, m) not in infer)
    # A chat completion answers JSON, or server-sent events when streamed.
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}


# -- the contract ----------------------------------------------------------------

def resolve(doc, schema):
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def shaped(doc, schema, value):
    """Whether value has the schema's type and required fields (following
    $ref and oneOf): what a client relies on."""
    schema = resolve(doc, schema)
    if "oneOf" in schema:
        return any(shaped(doc, alt, value) for alt in schema["oneOf"])
    if schema.get("type") == "object" or "required" in schema:
        return isinstance(value, dict) and all(k in value for k in schema.get("required", []))
    if schema.get("type") == "array":
        return isinstance(value, list)
    return True


def check_answer(doc, op, r, status, where):
    assert r.status_code == status, (where, status, r.status_code, r.text[:500])
    answer = op["responses"][str(status)]
    if "content" not in answer:  # a redirect: where to, in the documented header
        assert set(answer["headers"]) == {"Location"} and r.headers["Location"], where
        return
    media = r.headers.get("Content-Type", "").split(";")[0]
    content = answer["content"].get(media) or answer["content"].get("*/*")
    assert content, (where, media, list(answer["content"]))
    schema = content["schema"]
    if schema.get("$ref", "").endswith("/Error"):
        assert_error(r, status)
        return
    if media == "application/json":
        assert shaped(doc, schema, r.json()), (where, r.text[:500])


class Client:
    """Requests to one documented operation, with values for its
    placeholders and the key of its documented scope."""

    def __init__(self, s, doc, keys, ids):
        self.s, self.doc, self.keys, self.ids = s, doc, keys, ids

    def role(self, op):
        """The scope the operation documents: None for open, "" for any key."""
        sec = op["security"]
        if not sec:
            return None
        assert sec == [{"ApiKey": sec[0]["ApiKey"]}, {"Bearer": sec[0]["ApiKey"]}], sec
        return sec[0]["ApiKey"][0] if sec[0]["ApiKey"] else ""

    def key_for(self, op):
        role = self.role(op)
        return None if role is None else self.keys[role or "predict"]

    def path(self, pattern, **values):
        fill = {"name": "sentiment", "version": "1", "ref": "1", "alias": "production",
                "file": "console.js" if pattern.startswith("/ui/") else "docs.js", **self.ids, **values}
        return re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], pattern)

    def send(self, method, path, key="default", op=None, headers=None, **kw):
        headers = dict(headers or {})
        if key == "default":
            key = self.key_for(op)
        if key:
            headers["X-API-Key"] = key
        return requests.request(method, self.s.url(path), headers=headers, timeout=30, allow_redirects=False, **kw)


# Requests made to get an error, per (method, pattern), besides the generic
# ones (an unknown model name, a body that is not JSON, over the size limit,
# or a JSON number where the body's object belongs).
def special_errors(c):
    return {
        ("post", "/predict"): [(404, c.path("/predict"), {"json": GOOD_BODIES["PredictRequest"],
                                                           "headers": {"X-Model-Version": "9"}})],
        ("post", "/v1/embeddings"): [(404, "/v1/embeddings", {"json": {"model": "nope", "input": "x"}})],
        ("post", "/embed"): [(404, "/embed", {"json": {"model": "nope", "inputs": "x"}})],
        ("post", "/v1/chat/completions"): [(404, "/v1/chat/completions", {"json": {"model": "m", "messages": []}})],
        ("get", "/v1/gateway/budgets"): [(404, "/v1/gateway/budgets", {})],
        ("post", "/v1/batch"): [(404, "/v1/batch", {"json": {"model": "nope", "inputs": ["x"]}})],
        ("get", "/v1/batch"): [(422, "/v1/batch?limit=0", {}), (422, "/v1/batch?after=" + NO_JOB, {})],
        ("get", "/batch_result/{id}"): [(404, "/batch_result/" + NO_JOB, {})],
        ("get", "/v1/batch/{id}"): [(404, "/v1/batch/" + NO_JOB, {})],
        ("delete", "/v1/batch/{id}"): [(404, "/v1/batch/" + NO_JOB, {}),
                                       (409, c.path("/v1/batch/{id}"), {})],
        ("get", "/v1/batch/{id}/results"): [(404, "/v1/batch/%s/results" % NO_JOB, {}),
                                            (422, c.path("/v1/batch/{id}/results?limit=0"), {})],
        ("get", "/docs/{file}"): [(404, "/docs/nope.js", {})],
        ("get", "/ui/{file}"): [(404, "/ui/docs.js", {})],
        ("get", "/v1/metrics/history"): [(422, "/v1/metrics/history?since=soon", {})],
        ("delete", "/admin/models/{name}/aliases/{alias}"): [
            (404, c.path("/admin/models/{name}/aliases/{alias}", alias="none"), {})],
    }


def test_every_operation_answers_what_it_documents(keyed):
    s, doc, keys = keyed
    # Jobs to read: a seed task and a finished /v1/batch job.
    batch = {"X-API-Key": keys["batch"]}
    task = s.post("/batch_predict", json=[GOOD_TEXT], headers=batch).json()["task_id"]
    job = s.post("/v1/batch", json={"inputs": [GOOD_TEXT]}, headers=batch).json()["id"]
    wait_until(lambda: s.get("/v1/batch/" + job, headers=batch).json()["status"] == "completed", 60,
               "the batch job to complete")
    c = Client(s, doc, keys, {"id": job})
    special = special_errors(c)
    checked = set()
    # Unloading the model comes last: the other operations need it.
    ops = sorted(operations(doc), key=lambda o: o[0].endswith("/unload"))
    for pattern, method, op in ops:
        where = "%s %s" % (method.upper(), pattern)
        statuses = set(op["responses"])
        path = c.path(pattern, id=task if pattern.startswith("/batch_result") else job)
        body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        body_name = body_schema["$ref"].rsplit("/", 1)[1] if body_schema else None
        # Success, with the key of the documented scope (or none at all).
        ok = [st for st in statuses if st[0] in "23"]
        assert len(ok) == 1, where
        if body_name != "ChatCompletionRequest" and (method, pattern) not in NEEDS_GATEWAY and \
                not (method == "delete" and pattern == "/v1/batch/{id}"):
            kw = {"json": GOOD_BODIES[body_name]} if body_name else {}
            check_answer(doc, op, c.send(method, path, op=op, **kw), int(ok[0]), where)
            checked.add((ok[0], where))
        role = c.role(op)
        if role is None:
            assert not statuses & {"401", "403"}, where
        else:
            assert {"401", "403"} <= statuses, where
            check_answer(doc, op, c.send(method, path, key=None), 401, where)
            other = "chat" if role != "chat" else "predict"
            check_answer(doc, op, c.send(method, path, key=keys[other] if role else "sk-not-a-key"), 403, where)
            checked.update({("401", where), ("403", where)})
        if "{name}" in pattern:
            assert "404" in statuses, where
            kw = {"json": GOOD_BODIES[body_name]} if body_name else {}
            check_answer(doc, op, c.send(method, c.path(pattern, name="nope"), op=op, **kw), 404, where)
            checked.add(("404", where))
        if body_name:
            assert {"400", "413"} <= statuses, where
            big = json.dumps({"text": "x" * 1500}).encode()
            for status, data in ((400, b"{"), (413, big), (422, b"7")):
                if body_name == "ChatCompletionRequest":
                    break  # no gateway: 404 first
                check_answer(doc, op, c.send(method, path, op=op, data=data,
                                             headers={"Content-Type": "application/json"}), status, where)
                checked.add((str(status), where))
        for status, spath, kw in special.get((method, pattern), []):
            check_answer(doc, op, c.send(method, spath, op=op, **kw), status, where)
            checked.add((str(status), where))
    # Every operation got its success or a documented error at least once;
    # the rest (429, 5xx) need a loaded or failing server.
    assert {w for _, w in checked} == {"%s %s" % (m.upper(), p) for p, m, _ in operations(doc)}
    assert len(checked) > 120, len(checked)


def test_other_methods_are_405(keyed):
    s, doc, keys = keyed
    c = Client(s, doc, keys, {"id": NO_JOB})
    for pattern, item in doc["paths"].items():
        documented = {m.upper() for m in item}
        allow = documented | ({"HEAD"} if "GET" in documented else set())
        op = next(iter(item.values()))
        for method in METHODS:
            if method in item:
                continue
            r = c.send(method, c.path(pattern), op=op)
            assert_error(r, 405, "method_not_allowed")
            assert {m.strip() for m in r.headers["Allow"].split(",")} == allow, (method, pattern)
    # A path the document does not have is not answered.
    assert_error(c.send("get", "/v1/nowhere", key=keys["predict"]), 404, "not_found")
