"""test_batch_serving.py - `aiserve batch --model NAME`: an offline run goes
through serving as the server's requests and batch jobs do (docs/batch.md,
"aiserve batch").

On a repository whose sentiment/1 and /2 are both the bundled model (the
same weights, so both answer alike and the shadow agrees), checks what a
user sees: the model's cascade (models.cascade, from a flag or a --config
file) sends the texts its first version is unsure of to the second, and
each output line's "model_version" names the version that answered it; a
shadow (models.shadow) is compared and reported on stderr; a traffic
split's version is chosen once per run and kept by --resume even when the
split changed in between; a bad model, version or setting is one line on
stderr and exit status 2, with the output untouched.
"""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AISERVE_BIN", os.path.join(ROOT, "build", "aiserve"))
SENTIMENT = os.path.join(ROOT, "models", "sentiment", "1")
DEV_TSV = os.path.join(os.path.dirname(ROOT), "shared", "data", "sst2", "dev.tsv")


def sentences(n):
    with open(DEV_TSV, encoding="utf-8") as f:
        rows = f.read().splitlines()[1:]
    return [r.split("\t")[0] for r in rows if r.split("\t")[0]][:n]


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "repo" / "sentiment"
    d.mkdir(parents=True)
    for v in ("1", "2"):
        os.symlink(SENTIMENT, d / v)
    return tmp_path / "repo"


@pytest.fixture
def texts(tmp_path):
    t = sentences(40)
    path = tmp_path / "in.txt"
    path.write_text("".join(s + "\n" for s in t), encoding="utf-8")
    return path, t


def batch(repo, *args, out):
    return subprocess.run([BIN, "batch", "--model", "sentiment", "--model-repository", str(repo),
                           "--version-policy", "all", "--output", str(out), *args],
                          capture_output=True, timeout=120)


def results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def confidences(repo, src, tmp_path):
    out = tmp_path / "v1.jsonl"
    proc = batch(repo, "--input", str(src), "--version", "1", out=out)
    assert proc.returncode == 0, proc.stderr.decode()
    got = results(out)
    assert all(r["model_version"] == 1 for r in got)
    return got


def middle_threshold(rows):
    ranked = sorted(r["confidence"] for r in rows)
    return (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2


def check_cascade(rows, alone, threshold):
    unsure = [a["confidence"] < threshold for a in alone]
    assert 0 < sum(unsure) < len(alone)
    for r, a, u in zip(rows, alone, unsure):
        assert r["model_version"] == (2 if u else 1), (r, a, threshold)
        assert r["label"] == a["label"]                       # the same weights answer alike
        assert r["probs"] == pytest.approx(a["probs"], abs=1e-5)
        assert r["logits"] == pytest.approx(a["logits"], abs=1e-4)
    return sum(unsure)


def test_cascade_flag_escalates_the_unsure_texts(repo, texts, tmp_path):
    src, t = texts
    alone = confidences(repo, src, tmp_path)
    threshold = middle_threshold(alone)
    out = tmp_path / "out.jsonl"
    proc = batch(repo, "--input", str(src), "--cascade", "sentiment@1>2=%r" % threshold, "--batch-size", "8",
                 out=out)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    rows = results(out)
    assert [r["index"] for r in rows] == list(range(len(t)))
    n_unsure = check_cascade(rows, alone, threshold)
    assert "batch: model sentiment version 1, cascade to version 2 below" in err
    assert "batch: cascade sent %d of %d texts to version 2" % (n_unsure, len(t)) in err


def test_cascade_and_shadow_from_a_config_file(repo, texts, tmp_path):
    src, t = texts
    alone = confidences(repo, src, tmp_path)
    threshold = middle_threshold(alone)
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text("models:\n  repository: %s\n  version_policy: all\n  cascade:\n    - sentiment@1>2=%r\n"
                   "  shadow: [sentiment@2=100]\n" % (repo, threshold))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([BIN, "batch", "--config", str(cfg), "--model", "sentiment", "--input", str(src),
                           "--output", str(out)], capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    check_cascade(results(out), alone, threshold)
    # Every text's copy went to version 2 and agreed (the same weights).
    assert "batch: shadow version 2 agreed on %d of %d texts (100.0%%)" % (len(t), len(t)) in err


def test_a_split_version_is_chosen_once_and_kept_by_resume(repo, texts, tmp_path):
    src, t = texts
    full = tmp_path / "full.jsonl"
    proc = batch(repo, "--input", str(src), "--traffic", "sentiment@1=0,sentiment@2=100", "--batch-size", "8",
                 out=full)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "batch: model sentiment version 2\n" in proc.stderr.decode()
    assert all(r["model_version"] == 2 for r in results(full))
    # Interrupted after two batches and a torn line; the split changed since.
    part = tmp_path / "part.jsonl"
    lines = full.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:19]) + lines[19][:10])
    proc = batch(repo, "--input", str(src), "--traffic", "sentiment@1=100,sentiment@2=0", "--batch-size", "8",
                 "--resume", out=part)
    assert proc.returncode == 0, proc.stderr.decode()
    assert part.read_bytes() == full.read_bytes()
    # A pin wins over the split.
    pinned = tmp_path / "pinned.jsonl"
    proc = batch(repo, "--input", str(src), "--traffic", "sentiment@1=0,sentiment@2=100", "--version", "1",
                 out=pinned)
    assert proc.returncode == 0, proc.stderr.decode()
    assert all(r["model_version"] == 1 for r in results(pinned))


def test_a_model_directory_run_has_no_version_field(texts, tmp_path):
    src, t = texts
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([BIN, "batch", "--model", SENTIMENT, "--input", str(src), "--output", str(out)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = results(out)
    assert len(rows) == len(t) and all("model_version" not in r for r in rows)
    assert all(r["label"] in ("POSITIVE", "NEGATIVE") for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch"], "model 'nosuch' not found"),
    (["--model", "sentiment", "--version", "7"], "has no version 7"),
    (["--model", "sentiment", "--version", "production"], "no version or alias 'production'"),
    (["--model", SENTIMENT, "--version", "1"], "--version needs --model NAME"),
    (["--model", "sentiment", "--cascade", "sentiment@1>2"], "is not MODEL@FIRST>THEN=THRESHOLD"),
    (["--model", "sentiment", "--cascade", "sentiment@1>3=0.5"], "models.cascade: sentiment@1>3=0.5: "
                                                                   "model 'sentiment' has no version 3"),
    (["--model", "sentiment", "--shadow", "sentiment@2=0"], "models.shadow: sentiment@2=0: percent is 1 to 100"),
    (["--model", "sentiment", "--traffic", "sentiment@1=60"], "models.traffic: model 'sentiment': the weights "
                                                             "sum to 60"),
    (["--model", "sentiment", "--bogus-setting", "1"], "unknown flag --bogus-setting"),
])
def test_bad_models_versions_and_settings_exit_2_with_one_line(repo, texts, tmp_path, args, message):
    src, _ = texts
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([BIN, "batch", *args, "--model-repository", str(repo), "--version-policy", "all",
                           "--input", str(src), "--output", str(out)], capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()
