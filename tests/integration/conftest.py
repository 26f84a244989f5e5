"""conftest.py - pytest fixtures for the aiserve integration tests (helpers in harness.py)."""

import pytest

from harness import Server


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
