"""conftest.py - pytest fixtures for the aiserve integration tests (helpers in harness.py)."""

import json
import os
import shutil
import subprocess

import pytest

from harness import ROOT, Server


@pytest.fixture
def server_factory():
    """Start servers with make(*args, repo=..., env=..., wait=...); all are stopped at
    teardown and must exit 0 unless started with clean_exit=False."""
    started = []

    def make(*args, wait="ready", clean_exit=True, **kw):
        s = Server(*args, **kw)
        started.append((s, clean_exit))
        return s.start(wait=wait)

    yield make
    errors = []
    for s, clean in started:
        rc = s.stop()
        if clean and rc != 0:
            errors.append("server exited %r on SIGTERM:\n%s" % (rc, s.output()))
    assert not errors, "\n\n".join(errors)


@pytest.fixture(scope="module")
def server():
    """One server on the bundled models, shared by a test module (read-only use)."""
    s = Server().start()
    yield s
    rc = s.stop()
    assert rc == 0, "server exited %r on SIGTERM:\n%s" % (rc, s.output())


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Runs a script of tests/integration/js in Debian's chromium (through
    playwright-core, installed with `npm ci` from js/package-lock.json into a
    temporary directory): browser("docs_page.js", *args) -> the JSON line
    it prints."""
    js = os.path.join(ROOT, "tests", "integration", "js")
    chromium = os.environ.get("AISERVE_CHROMIUM", "/usr/lib/chromium/chromium")
    if not os.path.exists(chromium) or not shutil.which("npm"):
        pytest.fail("chromium, node and npm are needed (scripts/install-deps.sh installs them)")
    d = tmp_path_factory.mktemp("browser-npm")
    for f in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(js, f), d)
    p = subprocess.run(["npm", "ci", "--prefix", str(d), "--no-audit", "--no-fund", "--loglevel=error"],
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    env = dict(os.environ, NODE_PATH=str(d / "node_modules"), AISERVE_CHROMIUM=chromium)

    def run(script, *args):
        p = subprocess.run(["node", os.path.join(js, script), *map(str, args)], capture_output=True,
                           timeout=180, env=env)
        assert p.returncode == 0, (p.stdout.decode() + p.stderr.decode())[-4000:]
        return json.loads(p.stdout.decode().strip().splitlines()[-1])

    return run


@pytest.fixture
def redis_factory():
    """Start real redis-servers on free loopback ports: make(password=None).
    All are stopped at teardown."""
    from harness import RedisServer
    started = []

    def make(**kw):
        r = RedisServer(**kw)
        started.append(r)
        return r.start()

    yield make
    for r in started:
        r.stop()
