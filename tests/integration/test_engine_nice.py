"""test_engine_nice.py - models.engine_nice with the real binary: the
compute threads (each model's batcher and forward-pass workers) run at the
server's nice value plus the setting, the HTTP threads keep the server's
own, and by default (0) every thread runs at the server's nice value, as
docs/engine.md (Threads) and docs/configuration.md say. Nice values are read
from /proc/PID/task/*/stat, as `ps -L -o nice` shows them."""

import os

from harness import wait_until

TEXTS = ["a gripping , beautifully made film .", "dull and far too long ."] * 32


def threads(pid):
    """{tid: (nice, cpu ticks)} of every thread of process pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that just ended
            continue
        # After the command: state is field 3, utime/stime 14/15, nice 19.
        out[int(tid)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return out


def ticks_at(pid, nice):
    return sum(t for n, t in threads(pid).values() if n == nice)


def test_compute_threads_run_at_the_configured_nice(server_factory):
    s = server_factory("--engine-nice", "7", "--engine-threads", "2", "--no-cache")
    pid = s.proc.pid
    base = threads(pid)[pid][0]  # the main thread: the server's own nice value
    levels = {n for n, _ in threads(pid).values()}
    assert levels == {base, base + 7}, levels
    # The batcher and the one worker besides it (engine_threads 2), at least.
    assert sum(n == base + 7 for n, _ in threads(pid).values()) >= 2
    # The raised threads are the ones that compute: inference adds to their
    # CPU time (the HTTP threads stay at the server's nice value).
    before = ticks_at(pid, base + 7)

    def computed():
        r = s.post("/predict", json={"texts": TEXTS})
        assert r.status_code == 200, r.text
        return ticks_at(pid, base + 7) > before
    wait_until(computed, what="CPU time on the nice +7 threads while predicting")
    assert threads(pid)[pid][0] == base


def test_by_default_every_thread_keeps_the_servers_nice(server_factory):
    s = server_factory("--engine-threads", "2")
    r = s.post("/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    pid = s.proc.pid
    base = threads(pid)[pid][0]
    assert {n for n, _ in threads(pid).values()} == {base}
    assert len(threads(pid)) > 4  # event loops, loader, batcher, worker: all of them looked at
