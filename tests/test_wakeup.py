"""Idle workers of a pool wake when a sibling makes work claimable (worker/wakeup.py), and a
slice too narrow to share is not cut."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading

from sqlalchemy import text

from tests.conftest import enqueue_items, job_row, wait_for
from tests.fixtures import make_items
from tidegate.worker import keys
from tidegate.worker.runner import Worker, WorkerConfig
from tidegate.worker.wakeup import Wakeup

# each batch records the worker that ran it (its connections are named after it) and sleeps 50 ms
HANDLER = ("INSERT INTO batch_log (k, app) SELECT k, current_setting('application_name')"
           " FROM items, (SELECT pg_sleep(0.05)) d WHERE k > :lo AND k <= :hi")
HOUR = 3600.0


class RecordingWakeup(Wakeup):
    """The real thing, telling the test when a worker has gone idle."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = threading.Event()

    def wait(self, seen: int, timeout: float, stop: threading.Event) -> bool:
        self.idle.set()
        return super().wait(seen, timeout, stop)


def _notify_forever(wakeup: Wakeup) -> None:
    while True:
        wakeup.notify()


def test_a_notify_between_looking_and_waiting_is_not_lost():
    wakeup, stop = Wakeup(), threading.Event()
    seen = wakeup.seen()
    wakeup.notify()  # a sibling commits work after we looked and found none
    assert wakeup.wait(seen, HOUR, stop) is True  # returns at once: the generation moved
    assert wakeup.wait(wakeup.seen(), 0.05, stop) is False  # nothing new: sleeps out its timeout


def test_a_notify_crosses_processes_and_a_worker_killed_while_notifying_leaves_it_working():
    """SIGKILL lands anywhere: a process-shared lock held by the dead worker would hang its siblings."""
    ctx = mp.get_context("spawn")
    wakeup, stop = Wakeup(ctx), threading.Event()
    seen = wakeup.seen()
    child = ctx.Process(target=_notify_forever, args=(wakeup,))
    child.start()
    assert wakeup.wait(seen, HOUR, stop) is True
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    seen = wakeup.seen()
    wakeup.notify()
    assert wakeup.wait(seen, HOUR, stop) is True


def test_an_idle_sibling_takes_the_second_slice_when_it_is_planned_not_a_poll_later(engine, db_url, tmp_path):
    make_items(engine, 400)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE batch_log (k bigint NOT NULL, app text NOT NULL)"))
    wakeup, stop = RecordingWakeup(), threading.Event()
    config = WorkerConfig(url=db_url, poll_seconds=HOUR, lease_seconds=30)
    idle = Worker(config, stop, wakeup)
    threads = [threading.Thread(target=idle.run, daemon=True)]
    threads[0].start()
    wait_for(wakeup.idle.is_set, what="the first worker to find nothing and sleep (for up to an hour)")
    job = enqueue_items(db_url, tmp_path, HANDLER, batch_size=20, concurrency=2, to="401")
    planner = Worker(config, stop, wakeup)  # plans the job, works one slice, wakes the sleeper for the other
    threads.append(threading.Thread(target=planner.run, daemon=True))
    threads[1].start()
    try:
        wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="the job to finish")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with engine.connect() as conn:
        by_worker = dict(conn.execute(text("SELECT app, count(*) FROM batch_log GROUP BY 1")).all())
        distinct = conn.execute(text("SELECT count(DISTINCT k) FROM batch_log")).scalar()
    assert sorted(by_worker) == sorted(f"tidegate-worker {w.id}" for w in (idle, planner))
    assert sum(by_worker.values()) == distinct == 400


def test_a_slice_narrower_than_two_batches_is_not_cut():
    assert keys.midpoint(0, 100, min_width=40) == 50
    assert keys.midpoint(0, 39, min_width=40) is None  # finishing 39 keys beats handing half of them over
    assert keys.midpoint(0, 3) == 1 and keys.midpoint(0, 2) is None


SIGNAL_IN_THE_LOCK = """
import os, signal, threading
from tidegate.worker.signals import on_signals
stop = threading.Event()
on_signals(lambda signum: stop.set())
with stop._cond:  # the instant inside Event.wait when the main thread holds the event's own lock
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the Python-level handler runs here, in this thread, lock held
        pass
print("stopped" if stop.wait(30) else "not stopped")
"""


def test_a_sigterm_landing_while_the_main_thread_holds_the_stop_events_lock_still_stops_it():
    """The hang CI hit once: a handler calling stop.set() in the main thread, inside Event.wait's lock.
    With the handler of worker/signals.py the signal is acted on from a thread of its own."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_THE_LOCK], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "stopped"), proc.stderr


SIGNAL_BEFORE_THE_WATCHER = """
import os, signal, threading
from tidegate.worker.signals import hold, on_signals
stop = threading.Event()
hold()  # as run_pool does before forking its first workers
child = os.fork()
if child == 0:  # a forked worker: the stop request comes before its watcher is up
    os.kill(os.getpid(), signal.SIGTERM)
    on_signals(lambda signum: stop.set())
    os._exit(0 if stop.wait(30) else 3)
os.kill(os.getpid(), signal.SIGTERM)  # the pool itself, in the same gap
on_signals(lambda signum: stop.set())
_, status = os.waitpid(child, 0)
print("stopped" if stop.wait(30) else "not stopped", os.waitstatus_to_exitcode(status))
"""


def test_a_stop_request_before_the_watcher_is_up_waits_for_it_instead_of_killing_the_pool():
    """CI saw a pool end by SIGTERM's default action (exit -15, no drain, no kill of a stuck worker): the
    signal came between the fork of the first workers and the pool's watcher. Held, it is delivered to the
    watcher once it is up, in the pool and in a forked worker alike."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_BEFORE_THE_WATCHER], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "stopped 0"), proc.stderr
