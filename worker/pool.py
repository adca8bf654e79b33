"""The worker pool: N isolated worker processes under one supervisor.

* Each worker is its own process with its own connections and lease. The
  pool's first workers are forked from the supervisor before it has any thread
  or database connection (it has imported everything they need, so a worker is
  working in milliseconds instead of re-importing SQLAlchemy and psycopg for
  ~0.5 s); a restarted worker is spawned (a fresh interpreter: by then the
  supervisor has threads and connections, which a fork must not inherit). A worker that dies is restarted with a
  backoff of its own slot: at once after a worker that lived a minute, then
  1 s, 2 s, 4 s ... up to 60 s while it keeps dying young; the pool logs why.
  Its lease is expired at once, so its slices are taken over without waiting.
* A worker that died during a batch (worker/slots.py says which) counts a death
  against the batch's job; a job whose batches kill workers N times in a row
  fails as poison (worker/deadline.py). The batch's server backend, if it
  outlived its client, is terminated so its row lock goes.
* SIGTERM or SIGINT to the supervisor is passed on; every worker finishes the
  batch in flight (or cancels it after ``--stop-grace``), releases what it
  holds and exits 0, then the supervisor exits 0. A worker still there after
  the grace and a margin is SIGKILLed (the pool then exits 1).
* Workers ask the kernel for SIGTERM if the supervisor dies (PR_SET_PDEATHSIG),
  so a SIGKILLed supervisor leaves no orphan holding leases.
* ``--drain``: workers exit once nothing is claimable; the pool exits 0 when
  all have.
* Idle workers watch a counter the pool shares (worker/wakeup.py): a sibling
  that plans a job, cuts a slice or finishes one wakes them within 50 ms.
* Over several targets (``targets``): every worker process serves all of them
  (worker/multi.py); a death is recorded in the database of the batch it
  interrupted; maintenance and the metrics' gauges visit each target in turn.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import replace

from sqlalchemy import Engine

from tidegate.worker import maintenance, signals, store
from tidegate.worker.db import first_line, make_engine
from tidegate.worker.deadline import EXIT_WEDGED, log_death
from tidegate.worker.logs import setup_logging
from tidegate.worker.maintenance import RetentionConfig
from tidegate.worker.runner import Worker, WorkerConfig
from tidegate.worker.slots import InFlight, Slot, Slots
from tidegate.worker.wakeup import Wakeup

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
BACKOFF_MAX = 60.0  # seconds between restarts of a slot whose worker keeps dying young
HEALTHY = 60.0  # a worker that lived this long resets its slot's backoff
STOP_MARGIN = 15.0  # seconds after the stop grace before the pool SIGKILLs a worker still there


def _worker_main(config: WorkerConfig, index: int, log_level: str, log_format: str, wakeup: Wakeup,
                 slot: Slot, targets: list[tuple[str, str]] | None = None, max_open: int = 8) -> None:
    setup_logging(log_level, log_format, process_name=f"worker-{index}")
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: orphans then stop at their next lease check
    stop = threading.Event()

    def on_signal(signum: int) -> None:  # on the signal watcher's thread (worker/signals.py)
        log.info("received %s: finishing the batch in flight, then exiting", signal.Signals(signum).name)
        stop.set()

    signals.on_signals(on_signal)
    if targets:
        from tidegate.worker.multi import MultiWorker

        code = MultiWorker(replace(config, exit_when_wedged=True), targets, stop, wakeup, slot, max_open).run()
    else:
        code = Worker(replace(config, exit_when_wedged=True), stop, wakeup, slot).run()
    # Connections are closed and logs flushed: skip the interpreter's teardown of every module
    # and object (about 0.3 s with SQLAlchemy loaded), as multiprocessing does for forked children.
    logging.shutdown()
    os._exit(code)


def backoff(deaths_in_a_row: int) -> float:
    """Seconds before restarting a slot whose worker died ``deaths_in_a_row`` times, each young."""
    return 0.0 if deaths_in_a_row <= 1 else min(BACKOFF_MAX, 2.0 ** (deaths_in_a_row - 2))


def how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    if code == EXIT_WEDGED:
        return f"exit code {code}: a batch wedged it"
    return f"exit code {code}"


class _Deaths:
    """The pool's bookkeeping after a worker process died, on a connection of the supervisor's own."""

    def __init__(self, config: WorkerConfig, targets: list[tuple[str, str]] | None = None) -> None:
        self.config = config
        self.urls = [url for _, url in targets] if targets else [config.url]
        self._engines: dict[int, Engine] = {}

    def record(self, worker_id: str | None, batch: InFlight | None, how: str, count: bool) -> None:
        """End the dead worker's batch backend, count the death against its job (``count``), expire its lease.

        Over several targets, in the database of the batch it was in (its leases elsewhere lapse)."""
        if worker_id is None or (batch is None and len(self.urls) > 1):
            return
        target = batch.target if batch is not None and 0 <= batch.target < len(self.urls) else 0
        engine = self._engines.get(target)
        if engine is None:
            engine = self._engines[target] = make_engine(self.urls[target], application_name="tidegate-pool",
                                                         pool_size=1, connect_timeout=5)
        try:
            with engine.begin() as conn:
                store.local_lock_timeout(conn, 5000)
                if batch is not None:
                    store.terminate_backend(conn, batch.backend_pid, batch.xact_start)
                    if count:
                        deaths, poisoned = store.record_worker_death(
                            conn, batch.job_id, f"worker died ({how}) during a batch of slice {batch.slice_no}",
                            self.config.max_worker_deaths)
                        log_death(batch.job_id, deaths, poisoned, self.config.max_worker_deaths)
                store.expire_worker(conn, worker_id)
        except Exception as err:  # its lease expires by itself; the death is not counted
            log.warning("pool: could not record the death of worker %s (%s)", worker_id, first_line(err))

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()


def fork_context() -> mp.context.BaseContext | None:
    """The ``fork`` context when forking is safe here: on a platform that has it, and in a process with
    no thread but this one (a fork copies locks another thread may hold, and no thread of the parent
    runs in the child). The caller must hold no database connection either (the child would share
    its socket); None: spawn."""
    if "fork" not in mp.get_all_start_methods() or threading.active_count() != 1:
        return None
    return mp.get_context("fork")


def run_pool(config: WorkerConfig, concurrency: int, log_level: str = "INFO", log_format: str = "text",
             metrics_port: int | None = None, retention: RetentionConfig | None = None,
             targets: list[tuple[str, str]] | None = None, max_open: int = 8) -> int:
    """Run the pool until it stops; the exit code. ``targets``: (name, url) of a pool over several
    databases (``config.url`` is then unused). Call it with no thread started and no database
    connection open in this process: the first workers are forked (``fork_context``)."""
    ctx = mp.get_context("spawn")  # restarts; the shared objects below work with both start methods
    # With --metrics-port every worker is spawned, after MetricsServer: prometheus-client picks its
    # multiprocess mode when it is imported, which this process did before that mode's directory existed.
    fork = fork_context() if metrics_port is None else None
    wakeup = Wakeup(ctx)  # an idle worker wakes when a sibling makes work claimable, not a poll later
    slots = Slots(ctx, concurrency)  # which batch each worker is in, read when one dies
    deaths = _Deaths(config, targets)
    stopping = threading.Event()
    # The first workers are forked before any thread or connection of this process exists (fork_context).
    procs: dict[int, mp.process.BaseProcess] = {}
    born: dict[int, float] = {}

    def start(index: int, how: mp.context.BaseContext = ctx) -> None:
        p = how.Process(target=_worker_main, args=(replace(config), index, log_level, log_format, wakeup,
                                                   slots.slot(index), targets, max_open),
                        name=f"tidegate-worker-{index}")
        p.start()
        procs[index] = p
        born[index] = time.monotonic()

    signals.hold()  # a stop request before the watcher below is up waits for it instead of killing us
    if fork is not None:
        for i in range(concurrency):
            start(i, fork)
    if retention is not None and targets:
        threading.Thread(target=maintenance.loop_targets, args=(targets, retention, stopping), daemon=True,
                         name="maintenance").start()
    elif retention is not None:  # the supervisor prunes old rows now and then; workers only work
        engine = make_engine(config.url, application_name="tidegate-maintenance", pool_size=1)
        threading.Thread(target=maintenance.loop, args=(engine, retention, stopping), daemon=True,
                         name="maintenance").start()
    metrics = None
    if metrics_port is not None:
        from tidegate.worker.metrics import MetricsServer

        if targets:
            metrics = MetricsServer(metrics_port, None, {
                name: make_engine(url, application_name="tidegate-metrics", pool_size=1, max_overflow=0,
                                  connect_timeout=5) for name, url in targets})
        else:
            metrics = MetricsServer(metrics_port, make_engine(config.url, application_name="tidegate-metrics",
                                                              pool_size=1))
    # Only this (main) thread touches the processes: a signal only sets ``stopping``, and the loop
    # below passes it on, also to a worker it was restarting at that very moment.
    young_deaths: dict[int, int] = {}  # per slot: deaths in a row of workers that died young
    restart_at: dict[int, float] = {}
    signalled: set[int] = set()  # pids sent SIGTERM
    kill_at: float | None = None
    failed = False

    def on_signal(signum: int) -> None:  # on the signal watcher's thread (worker/signals.py)
        if not stopping.is_set():
            log.info("pool: %s received, draining %d worker(s)", signal.Signals(signum).name, len(procs))
            stopping.set()

    signals.on_signals(on_signal)
    if fork is None:
        for i in range(concurrency):
            start(i)
    log.info("pool: %d worker process(es) started (queues=%s)", concurrency, ",".join(config.queues))

    while procs or (restart_at and not stopping.is_set()):
        now = time.monotonic()
        for index, p in list(procs.items()):
            if p.is_alive():
                continue
            p.join()
            del procs[index]
            code = p.exitcode
            if metrics is not None and p.pid:
                metrics.process_died(p.pid)
            batch = slots.in_flight(index)
            how = how_it_ended(code)
            if stopping.is_set() or (config.drain and code == 0):
                if code and code > 0:  # a worker that errored out; one killed by a signal was logged already
                    failed = True
                if code:  # killed by us after the grace, or crashed while stopping: free what it held
                    deaths.record(slots.worker_id(index), batch, how, count=False)
                slots.clear(index)
                continue
            young_deaths[index] = 1 if now - born[index] >= HEALTHY else young_deaths.get(index, 0) + 1
            delay = backoff(young_deaths[index])
            during = f" during a batch of job {batch.job_id} slice {batch.slice_no}" if batch else ""
            log.warning("pool: worker-%d died (%s)%s; restarting %s", index, how, during,
                        f"in {delay:.0f}s" if delay else "now")
            deaths.record(slots.worker_id(index), batch, how, count=True)
            slots.clear(index)
            restart_at[index] = now + delay
        if stopping.is_set():
            restart_at.clear()
            for p in procs.values():
                if p.pid not in signalled:
                    signalled.add(p.pid)
                    try:
                        os.kill(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass  # it died on its own meanwhile: reaped above next time round
            if kill_at is None:
                kill_at = now + config.stop_grace + STOP_MARGIN
            elif now >= kill_at and procs:
                for index, p in procs.items():
                    log.error("pool: worker-%d still running %.0fs after the stop request; killing it", index,
                              config.stop_grace + STOP_MARGIN)
                    p.kill()
                    failed = True  # not a clean stop: what it held waits for its lease
                kill_at = now + 3600  # once
        else:
            for index, when in list(restart_at.items()):
                if now >= when:
                    del restart_at[index]
                    start(index)
        # back at once when a worker exits; a signal sets ``stopping`` and is seen within 0.2 s
        timeout = min([0.2, *(max(0.0, t - now) for t in restart_at.values())])
        if procs:
            mp.connection.wait([p.sentinel for p in procs.values()], timeout=timeout)
        elif restart_at:
            stopping.wait(timeout)
    log.info("pool: all workers stopped")
    deaths.close()
    if metrics is not None:
        metrics.close()
    return 1 if failed else 0
