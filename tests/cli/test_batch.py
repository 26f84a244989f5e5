"""test_batch.py - `aiserve batch`: a file through the engine, as a user runs it.

Drives the real binary (AISERVE_BIN, set by ctest) on the tiny distilbert-f32
fixture and checks the contract of docs/batch.md: one output line per input
line, in order, whose result fields are the bytes `aiserve predict` prints;
ids echoed; lines without a result get {"index", "error"} and exit status 1;
--resume after kill -9, SIGTERM or a torn last line ends byte-identical to an
uninterrupted run; an existing output is refused without --resume, a foreign
one with it; progress on stderr. No assertion depends on timing: the kill
tests kill as early as they can and hold whatever happened to the same
result.
"""

import json
import os
import pty
import random
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import wait_until  # noqa: E402  (the suites' one way to wait for a condition)

BIN = os.environ.get("AISERVE_BIN", os.path.join(ROOT, "build", "aiserve"))
MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "distilbert-f32")
DEV_TSV = os.path.join(os.path.dirname(ROOT), "shared", "data", "sst2", "dev.tsv")
REPEAT = 6  # SST-2 dev x 6: about 5200 lines, half a second of work


def batch(*args, stdin=None, env=None, timeout=120):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([BIN, "batch", "--model", MODEL, *args], input=stdin,
                          capture_output=True, timeout=timeout, env=full_env)


def lines_of(path):
    return path.read_bytes().decode().splitlines()


def predict_lines(texts_path, batch_size):
    proc = subprocess.run([BIN, "predict", "--model", MODEL, "--batch-size", str(batch_size),
                           "--input", str(texts_path)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().splitlines()


def sst2_sentences():
    with open(DEV_TSV, encoding="utf-8") as f:
        rows = f.read().splitlines()[1:]
    return [r.split("\t")[0] for r in rows if r.split("\t")[0]]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A large text input and a large JSONL input (with ids) and the outputs
    of uninterrupted runs over them."""
    d = tmp_path_factory.mktemp("big")
    sentences = sst2_sentences() * REPEAT
    txt = d / "big.txt"
    txt.write_bytes("".join(s + "\n" for s in sentences).encode())
    jsonl = d / "big.jsonl"
    jsonl.write_bytes("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n"
                              for i, s in enumerate(sentences)).encode())
    refs = {}
    for path in (txt, jsonl):
        out = d / (path.name + ".ref.jsonl")
        proc = batch("--input", str(path), "--output", str(out), "--batch-size", "16")
        assert proc.returncode == 0, proc.stderr.decode()
        refs[path.suffix] = out.read_bytes()
    return {"txt": txt, "jsonl": jsonl, "n": len(sentences), "refs": refs}


def test_txt_results_are_predicts_in_order(tmp_path):
    texts = sst2_sentences()[:40] + ["caf\u00e9 au lait, tr\u00e8s bien", "  spaces around  "]
    src = tmp_path / "in.txt"
    # one line ends in CRLF, the last has no newline at all
    src.write_bytes(("\n".join(texts[:-2]) + "\r\n" + "\n".join(texts[-2:])).encode())
    out = tmp_path / "out.jsonl"
    proc = batch("--input", str(src), "--output", str(out), "--batch-size", "5")
    assert proc.returncode == 0, proc.stderr.decode()
    got = lines_of(out)
    want = predict_lines(src, 5)
    assert len(got) == len(want) == len(texts)
    for i, (g, w) in enumerate(zip(got, want)):
        # same bytes as predict after the index: one formatter for both
        assert g == '{"index":%d,' % i + w[1:]


def test_jsonl_echoes_ids_and_matches_predict(tmp_path):
    texts = sst2_sentences()[:12]
    ids = ["a", 7, None, {"k": [1, 2]}, "\u00e9t\u00e9", 3.5]
    rows = []
    for i, t in enumerate(texts):
        if i < len(ids):
            rows.append(json.dumps({"text": t, "id": ids[i], "other": "ignored"}))
        else:
            rows.append(json.dumps(t))  # a bare JSON string
    for name in ("in.jsonl", "in.json"):
        src = tmp_path / name
        src.write_bytes(("\n".join(rows) + "\n").encode())
        out = tmp_path / (name + ".out")
        proc = batch("--input", str(src), "--output", str(out), "--batch-size", "4")
        assert proc.returncode == 0, proc.stderr.decode()
        plain = tmp_path / "plain.txt"
        plain.write_bytes(("\n".join(texts) + "\n").encode())
        want = [json.loads(l) for l in predict_lines(plain, 4)]
        got = [json.loads(l) for l in lines_of(out)]
        assert len(got) == len(texts)
        for i, (g, w) in enumerate(zip(got, want)):
            head = ["index", "id"] if i < len(ids) else ["index"]
            assert list(g) == head + list(w)
            assert g["index"] == i
            if i < len(ids):
                assert g["id"] == ids[i]
            assert {k: v for k, v in g.items() if k not in ("index", "id")} == w


def test_lines_without_a_result_get_error_lines_and_exit_1(tmp_path):
    rows = [
        b'{"text": "a fine film", "id": 1}',
        b'{"text": ',                       # truncated JSON
        b"\xff\xfe\x00garbage\x01",          # binary
        b"",                                # empty line
        b"[1, 2]",                          # not a string or an object
        b'{"id": "no-text"}',
        b'{"text": 5, "id": 6}',
        b'"\\u0000 nul"',                   # jansson refuses NUL in strings
        b'"bad utf-8 \xc3"',
        b'{"text": "' + b"word " * 200000 + b'"}',  # a 1 MB line, truncated by the model
        b'"the last one"',
    ]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out.jsonl"
    proc = batch("--input", str(src), "--output", str(out), "--batch-size", "3")
    assert proc.returncode == 1, proc.stderr.decode()
    got = [json.loads(l) for l in lines_of(out)]
    assert [g["index"] for g in got] == list(range(len(rows)))
    ok = {0, 9, 10}
    for i, g in enumerate(got):
        if i in ok:
            assert "label" in g and "error" not in g, g
        else:
            assert set(g) <= {"index", "id", "error"} and g["error"], g
    assert got[0]["id"] == 1 and got[5]["id"] == "no-text" and got[6]["id"] == 6
    assert "JSON" in got[1]["error"] and "empty" in got[3]["error"]
    assert "text" in got[5]["error"]
    assert "batch: done, 11 texts, 8 errors" in proc.stderr.decode()


def test_garbage_text_file_gets_one_line_per_input_line(tmp_path):
    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(20000)) + b"\n\n" + b"x" * 300000
    src = tmp_path / "garbage.bin"
    src.write_bytes(data)
    out = tmp_path / "out.jsonl"
    proc = batch("--input", str(src), "--output", str(out))
    assert proc.returncode == 1, proc.stderr.decode()
    n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
    got = [json.loads(l) for l in lines_of(out)]
    assert [g["index"] for g in got] == list(range(n_lines))
    assert got[-2] == {"index": n_lines - 2, "error": "empty text"}
    assert "label" in got[-1]


def test_resume_after_kill_9_is_byte_identical(big, tmp_path):
    out = tmp_path / "out.txt.jsonl"
    proc = subprocess.Popen([BIN, "batch", "--model", MODEL, "--input", str(big["txt"]),
                             "--output", str(out), "--batch-size", "16", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or (out.exists() and out.stat().st_size > 0), 60,
                   "the run to write output or end", interval=0.005)
    finally:
        proc.kill()
        proc.wait()
    proc = batch("--input", str(big["txt"]), "--output", str(out), "--batch-size", "16", "--resume")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "resumed at" in proc.stderr.decode()
    assert out.read_bytes() == big["refs"][".txt"]


@pytest.mark.parametrize("cut", ["start", "first-line", "mid-batch", "batch-boundary", "mid-line", "complete"])
def test_resume_after_a_torn_line_is_byte_identical(big, tmp_path, cut):
    ref = big["refs"][".jsonl"]
    ends = [i + 1 for i, b in enumerate(ref) if b == ord("\n")]  # byte offset after each line
    at = {
        "start": 0,
        "first-line": 20,                        # inside line 0
        "mid-batch": ends[100],                  # 101 complete lines: not a multiple of 16
        "batch-boundary": ends[16 * 40 - 1],     # exactly 40 batches
        "mid-line": ends[2000] + 37,             # a torn write inside line 2001
        "complete": len(ref),
    }[cut]
    out = tmp_path / "out.jsonl"
    out.write_bytes(ref[:at])
    proc = batch("--input", str(big["jsonl"]), "--output", str(out), "--batch-size", "16", "--resume")
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes() == ref


def test_resume_on_a_missing_output_starts_from_the_beginning(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\nthree\n")
    out = tmp_path / "out.jsonl"
    proc = batch("--input", str(src), "--output", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr.decode()
    assert [json.loads(l)["index"] for l in lines_of(out)] == [0, 1, 2]


def test_sigterm_stops_after_a_batch_and_resume_finishes(big, tmp_path):
    """Input from a pipe held open: the run is deterministically mid-way when
    the signal comes, blocked reading the rest."""
    out = tmp_path / "out.jsonl"
    head = b"".join(big["txt"].read_bytes().splitlines(keepends=True)[:40])
    proc = subprocess.Popen([BIN, "batch", "--model", MODEL, "--input", "-", "--output", str(out),
                             "--batch-size", "16"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(head)
        proc.stdin.flush()
        wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") == 32, 60,
                   "the first 32 results in the output", interval=0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted after 32 texts" in err.decode() and "--resume" in err.decode()
    proc = batch("--input", str(big["txt"]), "--output", str(out), "--batch-size", "16", "--resume")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "resumed at 32" in proc.stderr.decode()
    assert out.read_bytes() == big["refs"][".txt"]


def test_existing_output_is_refused_without_resume(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\n")
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")  # an empty file is fine
    assert batch("--input", str(src), "--output", str(out)).returncode == 0
    before = out.read_bytes()
    proc = batch("--input", str(src), "--output", str(out))
    assert proc.returncode == 2
    assert "--resume" in proc.stderr.decode() and len(proc.stderr.decode().splitlines()) == 1
    assert out.read_bytes() == before


def test_resume_refuses_an_output_that_is_not_this_runs(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(json.dumps({"id": i, "text": f"text {i}"}).encode() + b"\n"
                             for i in range(10)))
    out = tmp_path / "out.jsonl"
    assert batch("--input", str(src), "--output", str(out)).returncode == 0
    good = lines_of(out)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(json.dumps({"id": f"x{i}", "text": "t"}).encode() + b"\n"
                               for i in range(10)))
    short = tmp_path / "short.jsonl"
    short.write_bytes(src.read_bytes().splitlines(keepends=True)[0])
    cases = [
        (src, [good[1], good[0]], "index"),                   # out of order
        (src, [good[0], "not json at all"], "index"),          # garbage line
        (src, [good[0], good[2]], "index"),                   # a gap
        (other, good[:3], "id"),                              # another input's output
        (short, good[:3], "more lines"),                      # longer than the input
    ]
    for inp, content, needle in cases:
        data = ("\n".join(content) + "\n").encode()
        out.write_bytes(data)
        proc = batch("--input", str(inp), "--output", str(out), "--resume")
        err = proc.stderr.decode()
        assert proc.returncode == 2, (content, err)
        assert needle in err and len(err.splitlines()) == 1, err
        assert out.read_bytes() == data  # untouched


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\nthree\nfour\nfive\n")
    out = tmp_path / "out.jsonl"
    env = {"AISERVE_PROGRESS_INTERVAL_MS": "0"}
    proc = batch("--input", str(src), "--output", str(out), "--batch-size", "2", env=env)
    assert proc.returncode == 0
    err = proc.stderr.decode().splitlines()
    progress = r"batch: %d/5 \(%s%%\), [0-9.]+ texts/s, ETA (\?|\d+ s)"
    assert re.fullmatch(progress % (2, "40.0"), err[0]), err
    assert re.fullmatch(progress % (4, "80.0"), err[1]), err
    assert re.fullmatch(progress % (5, "100.0"), err[2]), err
    assert re.fullmatch(r"batch: done, 5 texts, 0 errors, [0-9.]+ s, [0-9.]+ texts/s", err[3]), err
    assert len(err) == 4
    # from a pipe there is no total: done and rate only
    proc = batch("--input", "-", "--output", str(tmp_path / "pipe.jsonl"), "--batch-size", "2",
                 stdin=src.read_bytes(), env=env)
    assert proc.returncode == 0
    err = proc.stderr.decode().splitlines()
    assert re.fullmatch(r"batch: 2 done, [0-9.]+ texts/s", err[0]), err
    assert err[-1].startswith("batch: done, 5 texts, 0 errors")
    # the default interval (2 s) leaves a short run with the summary alone
    proc = batch("--input", str(src), "--output", str(tmp_path / "quiet.jsonl"))
    assert proc.stderr.decode().startswith("batch: done, 5 texts")


def test_progress_bar_when_stderr_is_a_terminal(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\ntwo\nthree\nfour\nfive\n")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([BIN, "batch", "--model", MODEL, "--input", str(src), "--output",
                                 str(tmp_path / "out.jsonl"), "--batch-size", "2"],
                                stdout=subprocess.DEVNULL, stderr=slave,
                                env=dict(os.environ, AISERVE_PROGRESS_INTERVAL_MS="0"))
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    text = seen.decode()
    assert "\r[" in text and "5/5 100.0%" in text  # redrawn in place
    assert "batch: done, 5 texts, 0 errors" in text


def test_usage_and_file_errors_exit_2(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello\n")
    out = str(tmp_path / "out.jsonl")
    cases = [
        [BIN, "batch", "--model", MODEL, "--input", str(src)],                      # no --output
        [BIN, "batch", "--model", MODEL, "--output", out],                          # no --input
        [BIN, "batch", "--input", str(src), "--output", out],                       # no --model
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", out, "stray"],
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", out, "--batch-size", "0"],
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", out, "--threads", "x"],
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", out, "--bogus"],
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", "-"],
        [BIN, "batch", "--model", MODEL, "--input", str(tmp_path / "missing.txt"), "--output", out],
        [BIN, "batch", "--model", MODEL, "--input", str(tmp_path), "--output", out],   # a directory
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", str(tmp_path)],
        [BIN, "batch", "--model", MODEL, "--input", str(src), "--output", str(src)],   # itself
        [BIN, "batch", "--model", str(tmp_path), "--input", str(src), "--output", out],  # no model
        [BIN, "batch", "--model", os.path.join(ROOT, "tests", "fixtures", "models", "bert-base-embed"),
         "--input", str(src), "--output", out],                                     # not a classifier
    ]
    for argv in cases:
        proc = subprocess.run(argv, capture_output=True, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert not os.path.exists(out) or os.path.getsize(out) == 0, argv
    proc = subprocess.run([BIN, "batch", "--model", MODEL, "--input", str(src), "--output", out],
                          capture_output=True, timeout=60,
                          env=dict(os.environ, AISERVE_PROGRESS_INTERVAL_MS="soon"))
    assert proc.returncode == 2
    proc = subprocess.run([BIN, "batch", "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"--resume" in proc.stdout
