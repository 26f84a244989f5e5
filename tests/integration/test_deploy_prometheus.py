"""test_deploy_prometheus.py - the Prometheus setup shipped in deploy/prometheus/.

promtool checks prometheus.yml and alerts.yml and runs the rules' unit tests
(alerts_test.yml: every alert fires in one case and stays silent in another);
every alert has a runbook in docs/operations.md and uses only metric families
of docs/metrics.md. Then a real Prometheus server (Debian's `prometheus`) runs
on loopback with the shipped config, its targets pointed at a running aiserve
(on a real redis-server, with an LLM gateway configured, so every family the
rules use is exported), and its HTTP API must show every rule group loaded
and evaluated without error, the targets up, and every metric the rules use
among the families it scraped.
"""

import os
import re
import shutil
import socket
import subprocess

import pytest
import requests
import yaml

from harness import ROOT, wait_until
from test_metrics_doc import documented_families

DEPLOY = os.path.join(ROOT, "deploy", "prometheus")
CONFIG = os.path.join(DEPLOY, "prometheus.yml")
RULES = os.path.join(DEPLOY, "alerts.yml")
RULE_TESTS = os.path.join(DEPLOY, "alerts_test.yml")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")
# Names of metric families in a PromQL expression (label names and functions
# never start with these).
METRIC = re.compile(r"\b((?:aiserve|prediction|model_errors|process)_[a-zA-Z0-9_]*)")


def tool(name):
    path = shutil.which(name)
    assert path, ("%s is not installed: it comes with Debian's prometheus package "
                  "(scripts/install-deps.sh installs it)" % name)
    return path


def run(*cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "%s exited %d:\n%s" % (" ".join(cmd), p.returncode, out)
    return out


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules():
    return [r for g in load(RULES)["groups"] for r in g["rules"] if "alert" in r]


def used_families(expr, exported):
    """The metric families an expression reads (a histogram's _bucket, _sum
    and _count mapped to their family when it is one of `exported`)."""
    out = set()
    for name in METRIC.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        out.add(base if base != name and base in exported else name)
    return out


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    assert load(CONFIG)["rule_files"] == ["alerts.yml"]   # resolved next to prometheus.yml
    out = run(promtool, "check", "config", CONFIG)
    assert "SUCCESS: 1 rule files found" in out, out
    out = run(promtool, "check", "rules", RULES)
    assert "SUCCESS: %d rules found" % len(alert_rules()) in out, out


def test_promtool_rule_unit_tests_fire_and_stay_silent_for_every_alert():
    out = run(tool("promtool"), "test", "rules", RULE_TESTS)
    assert "SUCCESS" in out, out
    fires, silent = set(), set()
    for case in load(RULE_TESTS)["tests"]:
        for t in case["alert_rule_test"]:
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), names
    assert not set(names) - fires, "alerts never tested firing: %s" % sorted(set(names) - fires)
    assert not set(names) - silent, "alerts never tested silent: %s" % sorted(set(names) - silent)


def test_every_alert_has_a_runbook_and_documented_metrics():
    with open(OPERATIONS, encoding="utf-8") as f:
        headings = {line[4:].strip() for line in f if line.startswith("### ")}
    documented = documented_families()
    for rule in alert_rules():
        name = rule["alert"]
        assert name in headings, "docs/operations.md has no '### %s' runbook section" % name
        assert rule["annotations"]["runbook"] == "docs/operations.md#" + name.lower(), name
        unknown = used_families(rule["expr"], documented) - documented
        assert not unknown, "%s uses metrics docs/metrics.md does not list: %s" % (name, sorted(unknown))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base, path, **params):
    """The data of a Prometheus API answer, or None while it cannot answer."""
    try:
        r = requests.get(base + path, params=params, timeout=5)
    except requests.RequestException:
        return None
    if r.status_code != 200:
        return None
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(tmp_path):
    """start(config dict, port): a prometheus server on 127.0.0.1:port with
    that config (alerts.yml beside it) and a fresh TSDB; stopped at teardown."""
    binary = tool("prometheus")
    procs = []

    def start(config, port):
        shutil.copy(RULES, tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [binary, "--config.file", str(tmp_path / "prometheus.yml"),
             "--storage.tsdb.path", str(tmp_path / "tsdb"),
             "--web.listen-address", "127.0.0.1:%d" % port],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
        return procs[-1]

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_prometheus_loads_the_rules_and_scrapes_aiserve(server_factory, redis_factory, prometheus, tmp_path):
    llm = tmp_path / "llm.yaml"
    llm.write_text("providers:\n  - {name: up, base_url: http://127.0.0.1:9/v1}\n"
                   "models:\n  - {name: m, provider: up}\n")
    redis = redis_factory()
    server = server_factory("--redis-url", redis.url(), "--gateway-config", str(llm))
    assert server.predict("scraped by prometheus").status_code == 200

    # The shipped config with its addresses pointed at loopback and 1 s
    # intervals (15 s would make the test wait for the first scrape).
    config = load(CONFIG)
    port = free_port()
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["aiserve"]["static_configs"] == [{"targets": ["aiserve-1:8000", "aiserve-2:8000"]}]
    jobs["aiserve"]["static_configs"] = [{"targets": ["127.0.0.1:%d" % server.port]}]
    jobs["prometheus"]["static_configs"] = [{"targets": ["127.0.0.1:%d" % port]}]
    managers = config["alerting"]["alertmanagers"]
    assert managers == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    managers[0]["static_configs"] = [{"targets": ["127.0.0.1:%d" % free_port()]}]
    proc = prometheus(config, port)
    base = "http://127.0.0.1:%d" % port

    def log():
        return (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]

    def alive():
        assert proc.poll() is None, "prometheus exited %s:\n%s" % (proc.returncode, log())

    def targets_up():
        alive()
        data = api(base, "/api/v1/targets")
        active = data["activeTargets"] if data else []
        up = {t["labels"]["job"] for t in active if t["health"] == "up"}
        return active if up == {"aiserve", "prometheus"} else None

    active = wait_until(targets_up, 30, lambda: "both targets up:\n%s" % log())
    assert [t["scrapeUrl"] for t in active if t["labels"]["job"] == "aiserve"] == [
        "http://127.0.0.1:%d/metrics" % server.port]

    want = {g["name"]: sorted(r["alert"] for r in g["rules"]) for g in load(RULES)["groups"]}

    def rules_evaluated():
        alive()
        data = api(base, "/api/v1/rules")
        if not data:
            return None
        groups = {g["name"]: g for g in data["groups"]}
        if sorted(groups) != sorted(want):
            return None
        if any(r["health"] == "unknown" for g in groups.values() for r in g["rules"]):
            return None            # not evaluated yet
        return groups

    groups = wait_until(rules_evaluated, 30, lambda: "every rule group loaded and evaluated:\n%s" % log())
    for name, group in groups.items():
        assert group["file"] == str(tmp_path / "alerts.yml"), group["file"]
        assert sorted(r["name"] for r in group["rules"]) == want[name], name
        for r in group["rules"]:
            assert r["health"] == "ok", (r["name"], r.get("lastError"))

    # Every family the rules read is one this aiserve exports, as Prometheus
    # saw it (families without series yet included: metadata comes from the
    # # HELP and # TYPE lines).
    meta = wait_until(lambda: api(base, "/api/v1/targets/metadata", match_target='{job="aiserve"}'),
                      30, "the aiserve target's metadata")
    exported = {m["metric"] for m in meta}
    for rule in alert_rules():
        missing = used_families(rule["expr"], exported) - exported
        assert not missing, "%s uses metrics aiserve does not export: %s" % (rule["alert"], sorted(missing))
    # The rules see the real series: this replica is ready.
    ready = api(base, "/api/v1/query", query='aiserve_ready_time_seconds{job="aiserve"} > 0')
    assert len(ready["result"]) == 1, ready
