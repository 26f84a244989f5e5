"""test_cli.py - the aiserve command line as a user runs it.

Drives the real binary (AISERVE_BIN, set by ctest) on the fixture models and
checks what it prints against the PyTorch reference goldens in each model's
expected.json, plus the error contract: a rejected text gets {"error": ...}
in its place and exit status 1; a model that does not load is one line on
stderr naming the file, exit status 2. Also what a new user meets first:
every command's own --help, and the banner of `aiserve serve` (through
scripts/serve.sh, as `make run` starts it) naming the host and port the
server really uses, whichever of flag, environment or file set them.
"""

import json
import math
import os
import pty
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AISERVE_BIN", os.path.join(ROOT, "build", "aiserve"))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")


def run(*args, stdin=None):
    proc = subprocess.run([BIN, *args], input=stdin, capture_output=True, timeout=60)
    lines = [json.loads(l) for l in proc.stdout.decode().splitlines() if l.strip()]
    return proc.returncode, lines, proc.stderr.decode()


def expected(model):
    with open(os.path.join(MODELS, model, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


def usable_cases(model):
    """Golden cases whose text can be passed as a command-line argument."""
    return [c for c in expected(model)["cases"] if "\0" not in c["text"] and c["text"]]


@pytest.mark.parametrize("model", ["distilbert-f32", "bert-f16", "bert-multilabel", "distilbert-relu-3label",
                                   "roberta-regression"])
def test_predict_matches_reference(model):
    """"probs" are the reference's scores: softmax, sigmoid, or for a regression
    model the raw logits."""
    cases = usable_cases(model)
    rc, out, err = run("predict", "--model", os.path.join(MODELS, model), "--threads", "2",
                       *[c["text"] for c in cases])
    assert rc == 0, err
    assert len(out) == len(cases)
    labels = expected(model)["model"]["labels"]
    for case, got in zip(cases, out):
        assert got["logits"] == pytest.approx(case["logits"], abs=1e-4)
        assert got["probs"] == pytest.approx(case["probs"], abs=1e-4)
        best = max(range(len(labels)), key=lambda i: case["logits"][i])
        assert got["label"] == labels[best]
        assert got["confidence"] == pytest.approx(case["probs"][best], abs=1e-4)


def test_input_file_stdin_and_batching_keep_order(tmp_path):
    model = os.path.join(MODELS, "distilbert-f32")
    cases = usable_cases("distilbert-f32")
    texts = [c["text"] for c in cases if "\n" not in c["text"] and "\r" not in c["text"]]
    path = tmp_path / "texts.txt"
    path.write_bytes(("\n".join(texts) + "\n").encode())
    rc, from_file, _ = run("predict", "--model", model, "--batch-size", "3", "--input", str(path))
    assert rc == 0
    rc, from_stdin, _ = run("predict", "--model", model, "--input", "-", stdin=path.read_bytes())
    assert rc == 0
    rc, from_args, _ = run("predict", "--model", model, "--batch-size", "1", *texts)
    assert rc == 0
    assert len(from_file) == len(texts)
    for a, b, c in zip(from_file, from_stdin, from_args):
        assert a["logits"] == pytest.approx(b["logits"], abs=1e-5)
        assert a["logits"] == pytest.approx(c["logits"], abs=1e-5)


def test_embed_mean_cls_and_normalize():
    model = "bert-base-embed"
    cases = usable_cases(model)
    texts = [c["text"] for c in cases]
    d = os.path.join(MODELS, model)
    rc, mean, _ = run("embed", "--model", d, *texts)
    assert rc == 0
    rc, cls, _ = run("embed", "--model", d, "--pooling", "cls", *texts)
    assert rc == 0
    rc, unit, _ = run("embed", "--model", d, "--normalize", *texts)
    assert rc == 0
    for case, m, c, u in zip(cases, mean, cls, unit):
        assert m["embedding"] == pytest.approx(case["mean"], abs=1e-4)
        assert c["embedding"] == pytest.approx(case["cls"], abs=1e-4)
        norm = math.sqrt(sum(x * x for x in u["embedding"]))
        assert norm == pytest.approx(1.0, abs=1e-5)
        scale = math.sqrt(sum(x * x for x in case["mean"]))
        assert [x * scale for x in u["embedding"]] == pytest.approx(case["mean"], abs=1e-4)


def test_embed_works_on_a_classifier_encoder():
    cases = usable_cases("distilbert-f32")
    rc, out, _ = run("embed", "--model", os.path.join(MODELS, "distilbert-f32"), cases[0]["text"])
    assert rc == 0
    assert out[0]["embedding"] == pytest.approx(cases[0]["mean"], abs=1e-4)


def test_tokenize_shows_ids_and_tokens():
    model = "bert-f32"
    cases = usable_cases(model)
    rc, out, _ = run("tokenize", "--model", os.path.join(MODELS, model), *[c["text"] for c in cases])
    assert rc == 0
    for case, got in zip(cases, out):
        assert got["ids"] == case["ids"]
        assert got["tokens"][0] == "[CLS]" and got["tokens"][-1] == "[SEP]"
        assert len(got["tokens"]) == len(got["ids"])
    rc, out, _ = run("tokenize", "--model", os.path.join(MODELS, model), "--max-length", "4",
                     "one two three four five six")
    assert rc == 0 and len(out[0]["ids"]) == 4 and out[0]["tokens"][-1] == "[SEP]"


def test_info_describes_the_model():
    rc, out, _ = run("info", "--model", os.path.join(MODELS, "distilbert-f16"))
    assert rc == 0
    info = out[0]
    ref = expected("distilbert-f16")["model"]
    assert info["architecture"] == "DistilBertForSequenceClassification"
    assert info["dtype"] == "F16"
    assert info["labels"] == ref["labels"]
    assert info["hidden_size"] == ref["hidden"] and info["layers"] == ref["n_layers"]
    assert info["parameters"] > 0
    assert info["problem_type"] is None and info["score"] == "softmax"


@pytest.mark.parametrize("model,problem,score", [("bert-multilabel", "multi_label_classification", "sigmoid"),
                                                 ("xlmr-reranker", None, "sigmoid"),
                                                 ("roberta-regression", "regression", "none")])
def test_info_names_the_score_function(model, problem, score):
    rc, out, _ = run("info", "--model", os.path.join(MODELS, model))
    assert rc == 0 and out[0]["problem_type"] == problem and out[0]["score"] == score
    rc, out, _ = run("info", "--model", os.path.join(MODELS, "bert-base-embed"))  # an encoder has none
    assert rc == 0 and "score" not in out[0] and "problem_type" not in out[0]


def test_invalid_utf8_line_gets_an_error_and_the_rest_their_results(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"a fine film\n\xff\xfe broken \xc3\n another line\n")
    rc, out, _ = run("predict", "--model", os.path.join(MODELS, "distilbert-f32"), "--input", str(path))
    assert rc == 1
    assert len(out) == 3
    assert "label" in out[0] and "label" in out[2]
    assert "UTF-8" in out[1]["error"]


@pytest.mark.parametrize("breakage,needle", [
    ("no-config", "config.json"),
    ("truncated-weights", "model.safetensors"),
    ("bad-shape", "config.json implies"),
])
def test_load_errors_exit_2_with_one_line(tmp_path, breakage, needle):
    d = tmp_path / "model"
    shutil.copytree(os.path.join(MODELS, "distilbert-f32"), d)
    if breakage == "no-config":
        (d / "config.json").unlink()
    elif breakage == "truncated-weights":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    else:
        cfg = json.loads((d / "config.json").read_text())
        cfg["hidden_dim"] = 128
        (d / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run("predict", "--model", str(d), "hello")
    assert rc == 2
    assert out == []
    assert len(err.strip().splitlines()) == 1
    assert needle in err and str(d) in err


def test_usage_errors_exit_2():
    assert run("predict", "hello")[0] == 2
    assert run("frobnicate", "--model", "x")[0] == 2
    assert run("predict", "--model", os.path.join(MODELS, "distilbert-f32"), "--threads", "0", "x")[0] == 2
    rc, _, err = run("predict", "--model", os.path.join(MODELS, "bert-base-embed"), "hello")
    assert rc == 2 and "embed" in err


def eval_rows(model):
    """(text, label id of the reference's argmax) for the golden cases a TSV can hold."""
    rows = []
    for c in usable_cases(model):
        if any(ch in c["text"] for ch in "\t\n\r"):
            continue
        rows.append((c["text"], max(range(len(c["logits"])), key=lambda i: c["logits"][i])))
    return rows


def write_tsv(path, rows, header="sentence\tlabel"):
    path.write_bytes((header + "\n" + "".join(f"{t}\t{l}\n" for t, l in rows)).encode())


def test_eval_scores_against_the_reference_labels(tmp_path):
    model = "distilbert-relu-3label"
    d = os.path.join(MODELS, model)
    labels = expected(model)["model"]["labels"]
    rows = eval_rows(model)
    write_tsv(tmp_path / "ids.tsv", rows)
    rc, out, err = run("eval", "--model", d, "--data", str(tmp_path / "ids.tsv"), "--format", "json")
    assert rc == 0, err
    report = out[0]
    assert report["accuracy"] == 1.0 and report["evaluated"] == len(rows)
    assert report["labels"] == labels
    for i, row in enumerate(report["confusion_matrix"]):
        assert row[i] == sum(1 for _, l in rows if l == i) and sum(row) == row[i]
    # names instead of ids, and every label shifted by one: nothing right
    write_tsv(tmp_path / "names.tsv", [(t, labels[(l + 1) % 3]) for t, l in rows])
    rc, out, _ = run("eval", "--model", d, "--data", str(tmp_path / "names.tsv"), "--format", "json")
    assert rc == 0 and out[0]["accuracy"] == 0.0
    assert all(v["recall"] in (0.0, None) for v in out[0]["per_class"].values())
    # the text report says the same
    proc = subprocess.run([BIN, "eval", "--model", d, "--data", str(tmp_path / "ids.tsv")],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"accuracy    1.0000" in proc.stdout


def test_eval_errors(tmp_path):
    d = os.path.join(MODELS, "distilbert-f32")
    write_tsv(tmp_path / "noheader.tsv", [("fine", 1)], header="text\tlabel")
    rc, _, err = run("eval", "--model", d, "--data", str(tmp_path / "noheader.tsv"))
    assert rc == 2 and "'sentence'" in err
    write_tsv(tmp_path / "badlabel.tsv", [("fine", 1), ("bad", "MAYBE")])
    rc, _, err = run("eval", "--model", d, "--data", str(tmp_path / "badlabel.tsv"))
    assert rc == 2 and ":3:" in err and "MAYBE" in err
    (tmp_path / "utf8.tsv").write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff\t0\nalso fine\tNEGATIVE\n")
    rc, out, err = run("eval", "--model", d, "--data", str(tmp_path / "utf8.tsv"), "--format", "json")
    assert rc == 1 and out[0]["rejected"] == 1 and out[0]["evaluated"] == 2
    assert run("eval", "--model", d)[0] == 2  # no --data
    for model in ("bert-multilabel", "roberta-regression"):
        rc, _, err = run("eval", "--model", os.path.join(MODELS, model), "--data", str(tmp_path / "utf8.tsv"))
        assert rc == 2 and "single-label" in err


# -- every command's own --help ------------------------------------------

GENERAL_LIST = "tokenize  show what the model sees"  # a line only `aiserve --help` prints

# command -> (an option its help must list, an option of another command it must not)
COMMAND_HELP = {
    "serve": ("--port", "--scopes"),
    "keys": ("--scopes", "--resume"),
    "batch": ("--resume", "--pooling"),
    "predict": ("--batch-size", "--pooling"),
    "embed": ("--pooling", "--data"),
    "tokenize": ("--max-length", "--batch-size"),
    "info": ("--model", "--input"),
    "eval": ("--data", "--pooling"),
}


def help_text(*args):
    proc = subprocess.run([BIN, *args], capture_output=True, timeout=60)
    return proc.returncode, proc.stdout.decode()


@pytest.mark.parametrize("command", sorted(COMMAND_HELP))
def test_every_command_prints_its_own_help(command):
    own, foreign = COMMAND_HELP[command]
    for args in ([command, "--help"], [command, "-h"], ["help", command]):
        rc, out = help_text(*args)
        assert rc == 0, args
        assert out.startswith("usage: aiserve " + command), (args, out[:200])
        assert own in out, args
        assert foreign not in out and GENERAL_LIST not in out, args


def test_general_help_lists_every_command():
    for args in (["--help"], ["help"]):
        rc, out = help_text(*args)
        assert rc == 0 and GENERAL_LIST in out
        for command in COMMAND_HELP:
            assert "\n  %s " % command in out, command
    assert help_text("help", "frobnicate")[0] == 2


def test_an_option_of_another_command_is_refused():
    model = os.path.join(MODELS, "distilbert-f32")
    rc, out, err = run("predict", "--model", model, "--pooling", "cls", "hello")
    assert rc == 2 and out == [] and "--pooling" in err and "aiserve predict --help" in err
    rc, out, err = run("info", "--model", model, "stray")
    assert rc == 2 and out == [] and "'stray'" in err


# -- the server's banner: the address it really uses -------------------------

SERVE_SH = os.path.join(ROOT, "scripts", "serve.sh")
START_TIMEOUT = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(tmp_path, **extra):
    """The caller's environment without aiserve settings, no API keys, batch
    jobs under tmp_path, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AISERVE_") and k not in ("MODEL_PATH", "LOG_LEVEL")}
    env["AISERVE_KEYS_FILE"] = "/nonexistent/aiserve-tests/keys.json"
    env["AISERVE_BATCH_DATA_DIR"] = str(tmp_path / "jobs")
    env.update(extra)
    return env


class Serving:
    """A server started in the background from the repository root; threads
    read its stdout and stderr (a pipe, or a terminal when tty) into queues
    of lines."""

    def __init__(self, cmd, env, tty=False):
        master = None
        if tty:
            master, slave = pty.openpty()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=slave if tty else subprocess.PIPE, env=env, cwd=ROOT)
        if tty:
            os.close(slave)
        err = os.fdopen(master, "rb", buffering=0) if tty else self.proc.stderr
        self.err, self.out = queue.Queue(), queue.Queue()
        self.pumps = [threading.Thread(target=self._pump, args=(stream, q), daemon=True)
                      for stream, q in ((err, self.err), (self.proc.stdout, self.out))]
        for t in self.pumps:
            t.start()

    @staticmethod
    def _pump(stream, q):
        try:
            for raw in stream:
                q.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except OSError:  # a terminal whose other end has closed: EIO
            pass
        finally:
            stream.close()

    def lines_until(self, q, done):
        """Lines from q up to and including the first for which done(line)."""
        deadline, lines = time.monotonic() + START_TIMEOUT, []
        while not lines or not done(lines[-1]):
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and q.empty()):
                raise AssertionError("gave up waiting; read so far:\n" + "\n".join(lines))
            try:
                lines.append(q.get(timeout=min(left, 0.5)))
            except queue.Empty:
                pass
        return lines

    def banner(self):
        """The banner on stderr: its first line through the last curl hint."""
        lines = self.lines_until(self.err, lambda l: l.startswith("or open ") and "/docs)" in l)
        first = next(i for i, l in enumerate(lines) if l.startswith("aiserve: serving"))
        return lines[first:]

    def stop(self):
        """SIGTERM, then waits for the exit and the end of both streams.
        Returns the exit status and the stdout and stderr lines not read yet."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for t in self.pumps:
            t.join(timeout=10)
        drain = lambda q: [q.get() for _ in range(q.qsize())]
        return rc, drain(self.out), drain(self.err)


def check_banner(banner, port, host="127.0.0.1"):
    """The banner names http://host:port and its hints reach the server."""
    url = "http://%s:%d" % (host, port)
    assert (" on %s " % url in banner[0]) or (" from this machine %s " % url in banner[0]), banner[0]
    hints = [l for l in banner if l.startswith("  curl")]
    assert len(hints) == 3 and all(url + "/" in h for h in hints), banner
    # the hint's address works: a plain GET of one of the hinted paths
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        assert r.status == 200
    # ... and so does the console's (/ redirects to the page)
    assert banner[-1] == "or open %s/ in a browser: the operator console (API docs at %s/docs)." % (url, url)
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        assert r.status == 200 and r.url == url + "/ui" and b"aiserve console" in r.read()


@pytest.fixture
def serving():
    """Starts Serving(cmd, env, tty=...); each must exit 0 on SIGTERM."""
    started = []

    def start(cmd, env, **kw):
        s = Serving(cmd, env, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        assert s.stop()[0] == 0


def test_make_run_banner_shows_the_port_flag_over_the_environment(serving, tmp_path):
    port, other = free_port(), free_port()
    # what `make run ARGS="--port N"` runs; AISERVE_PORT loses to the flag
    s = serving([SERVE_SH, BIN, "--port", str(port)], serve_env(tmp_path, AISERVE_PORT=str(other)))
    check_banner(s.banner(), port)
    rc, out, _ = s.stop()
    assert rc == 0
    listening = [json.loads(l) for l in out if '"listening"' in l]
    assert listening and listening[0]["port"] == port
    assert all(l.startswith("{") for l in out), "stdout holds JSON lines only"


def test_banner_shows_the_environment_port_over_the_file(serving, tmp_path):
    port, other = free_port(), free_port()
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text("server:\n  port: %d\n" % other)
    s = serving([SERVE_SH, BIN], serve_env(tmp_path, AISERVE_PORT=str(port), AISERVE_CONFIG=str(cfg)))
    check_banner(s.banner(), port)


def test_banner_shows_the_config_file_host_and_port(serving, tmp_path):
    port = free_port()
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text("server:\n  host: 0.0.0.0\n  port: %d\n" % port)
    s = serving([BIN, "serve", "--config", str(cfg)], serve_env(tmp_path, AISERVE_BANNER="1"))
    banner = s.banner()
    assert "0.0.0.0:%d, every IPv4 address" % port in banner[0]
    check_banner(banner, port)  # the hints point at loopback


def test_banner_only_on_a_terminal_unless_asked(serving, tmp_path):
    # stderr a pipe and no AISERVE_BANNER: no banner
    s = serving([BIN, "serve", "--port", "0"], serve_env(tmp_path))
    s.lines_until(s.out, lambda l: '"listening"' in l)
    rc, _, err = s.stop()
    assert rc == 0 and not any("aiserve: serving" in l for l in err), err
    # stderr a terminal: the banner, with the port the kernel picked
    s = serving([BIN, "serve", "--port", "0"], serve_env(tmp_path), tty=True)
    listening = json.loads(s.lines_until(s.out, lambda l: '"listening"' in l)[-1])
    check_banner(s.banner(), listening["port"])
