"""test_embeddings.py - POST /v1/embeddings with the real binary: vectors equal
`aiserve embed` (mean pooling and L2 normalisation by default; pooling and
normalisation from a model's sentence-transformers files; named prompts
selected by prompt_name), base64 equal to floats, usage equal to the tokens, the errors, and the official `openai` npm
client (installed here with npm) talking to the server as an application
would. POST /embed, TEI's shape: the same vectors as lists, prompt_name with
the same rule, TEI's normalize, its errors, cached apart from /v1/embeddings."""

import base64
import json
import math
import os
import shutil
import struct
import subprocess

import pytest
import requests

from harness import BIN, FIXTURES, MODELS, assert_error

EMBED = os.path.join(FIXTURES, "bert-base-embed")
HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = ["hello world", "a quiet , odd little film", "Ünïcödé text, with accents: café"]


def cli_embed(texts, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "embed", "--model", EMBED, *args, *texts], capture_output=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return [json.loads(line)["embedding"] for line in p.stdout.decode().splitlines()]


def make_repo(tmp_path, st_files=None):
    """minilm/1 -> the embedding fixture (optionally with sentence-transformers
    files), sentiment/1 -> the bundled classifier."""
    repo = tmp_path / "repo"
    v = repo / "minilm" / "1"
    v.mkdir(parents=True)
    for f in os.listdir(EMBED):
        os.symlink(os.path.join(EMBED, f), v / f)
    for rel, content in (st_files or {}).items():
        (v / rel).parent.mkdir(parents=True, exist_ok=True)
        (v / rel).write_text(json.dumps(content))
    (repo / "sentiment").mkdir()
    os.symlink(os.path.join(MODELS, "sentiment", "1"), repo / "sentiment" / "1")
    return repo


def close(a, b, tol=1e-5):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_vectors_usage_and_base64(server_factory, tmp_path):
    s = server_factory(repo=make_repo(tmp_path))
    r = s.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    want = cli_embed(TEXTS, "--normalize")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for d, w in zip(body["data"], want):
        assert d["object"] == "embedding" and close(d["embedding"], w)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    p = subprocess.run([BIN, "tokenize", "--model", EMBED, *TEXTS], capture_output=True, timeout=60, env=env)
    tokens = sum(len(json.loads(line)["ids"]) for line in p.stdout.decode().splitlines())
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # one string; base64 is the little-endian float32 bytes of the same vector
    r = s.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"})
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vec = list(struct.unpack("<%df" % (len(raw) // 4), raw))
    assert close(vec, want[0])


def test_sentence_transformers_pooling(server_factory, tmp_path):
    st = {"modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                           {"idx": 1, "name": "1", "path": "1_Pooling",
                            "type": "sentence_transformers.models.Pooling"}],
          "1_Pooling/config.json": {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
                                    "pooling_mode_mean_tokens": False}}
    s = server_factory(repo=make_repo(tmp_path, st))
    got = s.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS}).json()["data"]
    want = cli_embed(TEXTS, "--pooling", "cls")             # CLS, not normalised: no Normalize module
    assert all(close(d["embedding"], w) for d, w in zip(got, want))


PROMPTS = {"config_sentence_transformers.json": {"prompts": {"query": "query: ", "passage": "passage: "},
                                                   "default_prompt_name": None}}


def test_prompt_name(server_factory, tmp_path):
    s = server_factory(repo=make_repo(tmp_path, PROMPTS))

    def embed(inp, **kw):
        r = s.post("/v1/embeddings", json={"model": "minilm", "input": inp, **kw})
        assert r.status_code == 200, r.text
        return r

    # the prompt is prepended to every input: "x" as a query is the raw text "query: x"
    for inp in (["x", "a quiet film"], "x"):
        got = embed(inp, prompt_name="query").json()
        want = cli_embed(["query: " + t for t in ([inp] if isinstance(inp, str) else [*inp])], "--normalize")
        assert all(close(d["embedding"], w) for d, w in zip(got["data"], want))
    plain = embed("x").json()["data"][0]["embedding"]
    assert close(plain, cli_embed(["x"], "--normalize")[0])           # no name, no default: no prompt
    assert not close(plain, embed("x", prompt_name="passage").json()["data"][0]["embedding"])
    # the cache tells the prompts apart (and the prompted text from the raw one: equal)
    q = embed("cached text", prompt_name="query")
    assert q.headers["X-Cache"] == "MISS"
    p = embed("cached text", prompt_name="passage")
    assert p.headers["X-Cache"] == "MISS" and p.json()["data"] != q.json()["data"]
    assert embed("cached text", prompt_name="query").headers["X-Cache"] == "HIT"
    assert embed("query: cached text").json()["data"] == q.json()["data"]
    # unknown names and a model without prompts: 422 naming the known ones
    r = s.post("/v1/embeddings", json={"model": "minilm", "input": "x", "prompt_name": "doc"})
    assert_error(r, 422, "invalid_request")
    assert "'query', 'passage'" in r.json()["error"]["message"]
    assert_error(s.post("/v1/embeddings", json={"model": "minilm", "input": "x", "prompt_name": 3}), 422,
                 "invalid_request")


def test_tei_embed_prompt_name(server_factory, tmp_path):
    s = server_factory(repo=make_repo(tmp_path, PROMPTS))
    inputs = ["x", "a quiet film"]

    def tei(**body):
        return s.post("/embed", json={"model": "minilm", **body})

    def v1(inp, **kw):
        r = s.post("/v1/embeddings", json={"model": "minilm", "input": inp, **kw})
        assert r.status_code == 200, r.text
        return [d["embedding"] for d in r.json()["data"]]

    r = tei(inputs=inputs, prompt_name="query")
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "1", r.text
    prompted = r.json()
    assert prompted == v1(inputs, prompt_name="query")       # the same rule, the same vectors
    assert close(prompted[0], cli_embed(["query: x"], "--normalize")[0])
    plain = tei(inputs=inputs).json()
    assert plain == v1(inputs)
    assert all(not close(a, b) for a, b in zip(prompted, plain))
    assert tei(inputs="x", prompt_name="passage").json() == v1("x", prompt_name="passage")
    assert tei(inputs="x", prompt_name=None).json() == [plain[0]]
    r = tei(inputs="x", prompt_name="doc")
    assert_error(r, 422, "invalid_request")
    assert "prompt_name 'doc' is unknown" in r.json()["error"]["message"]
    assert "'query', 'passage'" in r.json()["error"]["message"]
    assert_error(tei(inputs="x", prompt_name=3), 422, "invalid_request")


def test_tei_embed_shape_normalize_and_errors(server_factory, tmp_path):
    # CLS pooling without a Normalize module: TEI's normalize applies here
    st = {"modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                           {"idx": 1, "name": "1", "path": "1_Pooling",
                            "type": "sentence_transformers.models.Pooling"}],
          "1_Pooling/config.json": {"word_embedding_dimension": 32, "pooling_mode_cls_token": True}}
    repo = make_repo(tmp_path, st)
    os.symlink(EMBED, repo / "minilm" / "2")  # no sentence-transformers files: normalised
    s = server_factory("--version-policy", "all", repo=repo)
    raw = cli_embed(TEXTS, "--pooling", "cls")
    r = s.post("/embed", json={"model": "minilm", "inputs": TEXTS}, headers={"X-Model-Version": "1"})
    assert r.status_code == 200, r.text
    got = r.json()
    for g, w in zip(got, raw):                           # normalize defaults to true
        n = math.sqrt(sum(x * x for x in w))
        assert close(g, [x / n for x in w]) and abs(sum(x * x for x in g) - 1) < 1e-5
    r = s.post("/embed", json={"model": "minilm", "inputs": TEXTS[0], "normalize": False, "truncate": True,
                               "truncation_direction": "Right"}, headers={"X-Model-Version": "1"})
    assert r.status_code == 200 and close(r.json()[0], raw[0])
    # version 2 normalises its vectors: normalize false cannot be had there
    ok = s.post("/embed", json={"model": "minilm", "inputs": TEXTS[0]}, headers={"X-Model-Version": "2"})
    assert ok.status_code == 200 and close(ok.json()[0], cli_embed(TEXTS[:1], "--normalize")[0])
    r = s.post("/embed", json={"model": "minilm", "inputs": "x", "normalize": False}, headers={"X-Model-Version": "2"})
    assert_error(r, 422, "unsupported_model")
    assert "normalize" in r.json()["error"]["message"]
    # cached apart from /v1/embeddings: each endpoint's own shape
    s.post("/v1/embeddings", json={"model": "minilm", "input": "cache probe"})
    r = s.post("/embed", json={"model": "minilm", "inputs": "cache probe"})
    assert r.headers["X-Cache"] == "MISS" and isinstance(r.json()[0], list)
    assert s.post("/embed", json={"model": "minilm", "inputs": "cache probe"}).headers["X-Cache"] == "HIT"
    cases = [
        ({"model": "minilm"}, 422, "invalid_request"),
        ({"model": "minilm", "inputs": []}, 422, "invalid_request"),
        ({"model": "minilm", "inputs": ["ok", 3]}, 422, "invalid_text"),
        ({"model": "minilm", "inputs": " "}, 422, "empty_text"),
        ({"model": "minilm", "inputs": "x", "normalize": "yes"}, 422, "invalid_request"),
        ({"model": "minilm", "inputs": "x", "truncation_direction": "Left"}, 422, "invalid_request"),
        ({"model": "sentiment", "inputs": "x"}, 422, "unsupported_model"),
        ({"model": "nope", "inputs": "x"}, 404, "model_not_found"),
    ]
    for body, status, code in cases:
        assert_error(s.post("/embed", json=body), status, code)


def test_default_prompt_name(server_factory, tmp_path):
    st = {"config_sentence_transformers.json": {"prompts": {"query": "query: "}, "default_prompt_name": "query"}}
    s = server_factory(repo=make_repo(tmp_path, st))
    got = s.post("/v1/embeddings", json={"model": "minilm", "input": "x"}).json()["data"][0]["embedding"]
    assert close(got, cli_embed(["query: x"], "--normalize")[0])


def test_errors(server_factory, tmp_path):
    s = server_factory(repo=make_repo(tmp_path))
    cases = [
        ({"model": "sentiment", "input": "x"}, 422, "unsupported_model"),
        ({"model": "nope", "input": "x"}, 404, "model_not_found"),
        ({"model": "minilm", "input": []}, 422, "invalid_request"),
        ({"model": "minilm", "input": ["ok", 3]}, 422, "invalid_text"),
        ({"model": "minilm", "input": "  "}, 422, "empty_text"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, 422, "invalid_request"),
        ({"model": 7, "input": "x"}, 422, "invalid_request"),
        ({"model": "minilm"}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        assert_error(s.post("/v1/embeddings", json=body), status, code)
    assert_error(s.get("/v1/embeddings"), 405, "method_not_allowed")
    # /predict on the embedding model is still refused
    assert_error(s.post("/v1/models/minilm/predict", json={"text": "x"}), 422, "unsupported_model")


@pytest.fixture(scope="module")
def openai_client_dir(tmp_path_factory):
    if not shutil.which("npm") or not shutil.which("node"):
        pytest.fail("node and npm are needed (scripts/install-deps.sh installs them)")
    d = tmp_path_factory.mktemp("openai-npm")
    p = subprocess.run(["npm", "install", "--prefix", str(d), "--no-audit", "--no-fund", "--silent", "openai@4"],
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return d


@pytest.mark.parametrize("encoding", [None, "float"])
def test_official_openai_client(server_factory, tmp_path, openai_client_dir, encoding):
    s = server_factory(repo=make_repo(tmp_path))
    env = dict(os.environ, NODE_PATH=str(openai_client_dir / "node_modules"))
    args = ["node", os.path.join(HERE, "js", "openai_embeddings.js"), s.url(""), "minilm", json.dumps(TEXTS)]
    if encoding:
        args.append(encoding)
    p = subprocess.run(args, capture_output=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr.decode()
    res = json.loads(p.stdout)
    want = cli_embed(TEXTS, "--normalize")
    assert res["model"] == "minilm" and len(res["data"]) == 3
    for d, w in zip(res["data"], want):
        assert close(d["embedding"], w)
    assert res["usage"]["prompt_tokens"] > 0
