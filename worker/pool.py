"""The worker pool: N isolated worker processes under one supervisor.

* Each worker is its own process (``spawn``: no inherited connections) with
  its own connections and lease. A worker that dies is restarted, with a
  short backoff; its slices become claimable when its lease expires.
* SIGTERM or SIGINT to the supervisor is passed on; every worker finishes the
  batch in flight, releases what it holds and exits 0, then the supervisor
  exits 0.
* Workers ask the kernel for SIGTERM if the supervisor dies (PR_SET_PDEATHSIG),
  so a SIGKILLed supervisor leaves no orphan holding leases.
* ``--drain``: workers exit once nothing is claimable; the pool exits 0 when
  all have.
* Idle workers watch a counter the pool shares (worker/wakeup.py): a sibling
  that plans a job, cuts a slice or finishes one wakes them within 50 ms.
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

from worker import maintenance, signals
from worker.db import make_engine
from worker.logs import setup_logging
from worker.maintenance import RetentionConfig
from worker.runner import Worker, WorkerConfig
from worker.wakeup import Wakeup

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _worker_main(config: WorkerConfig, index: int, log_level: str, log_format: str, wakeup: Wakeup) -> None:
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
    code = Worker(config, stop, wakeup).run()
    # Connections are closed and logs flushed: skip the interpreter's teardown of every module
    # and object (about 0.3 s with SQLAlchemy loaded), as multiprocessing does for forked children.
    logging.shutdown()
    os._exit(code)


def run_pool(config: WorkerConfig, concurrency: int, log_level: str = "INFO", log_format: str = "text",
             metrics_port: int | None = None, retention: RetentionConfig | None = None) -> int:
    ctx = mp.get_context("spawn")
    wakeup = Wakeup(ctx)  # an idle worker wakes when a sibling makes work claimable, not a poll later
    stopping = threading.Event()
    if retention is not None:  # the supervisor prunes old rows now and then; workers only work
        engine = make_engine(config.url, application_name="tidegate-maintenance", pool_size=1)
        threading.Thread(target=maintenance.loop, args=(engine, retention, stopping), daemon=True,
                         name="maintenance").start()
    metrics = None
    if metrics_port is not None:
        from worker.metrics import MetricsServer

        metrics = MetricsServer(metrics_port, make_engine(config.url, application_name="tidegate-metrics",
                                                          pool_size=1))
    procs: dict[int, mp.process.BaseProcess] = {}
    restarts: dict[int, float] = {}
    failed = False

    def start(index: int) -> None:
        p = ctx.Process(target=_worker_main, args=(replace(config), index, log_level, log_format, wakeup),
                        name=f"tidegate-worker-{index}")
        p.start()
        procs[index] = p

    def on_signal(signum: int) -> None:  # on the signal watcher's thread (worker/signals.py)
        if stopping.is_set():
            return
        running = [p for p in list(procs.values()) if p.pid and p.is_alive()]
        log.info("pool: %s received, draining %d worker(s)", signal.Signals(signum).name, len(running))
        stopping.set()
        for p in running:
            os.kill(p.pid, signal.SIGTERM)

    signals.on_signals(on_signal)
    for i in range(concurrency):
        start(i)
    log.info("pool: %d worker process(es) started (queues=%s)", concurrency, ",".join(config.queues))

    while procs:
        for index, p in list(procs.items()):
            if p.is_alive():
                continue
            p.join()
            del procs[index]
            code = p.exitcode
            if metrics is not None and p.pid:
                metrics.process_died(p.pid)
            if stopping.is_set() or (config.drain and code == 0):
                if code and code > 0:  # a worker that errored out; one killed by a signal was logged already
                    failed = True
                continue
            how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            delay = 1.0 if time.monotonic() - restarts.get(index, 0) < 10 else 0.0
            log.warning("pool: worker-%d died (%s); restarting%s", index, how, f" in {delay:.0f}s" if delay else "")
            if delay:
                stopping.wait(delay)
                if stopping.is_set():
                    continue
            restarts[index] = time.monotonic()
            start(index)
        # back at once when a worker exits; a signal sets ``stopping`` and is seen within 0.2 s
        if procs:
            mp.connection.wait([p.sentinel for p in procs.values()], timeout=0.2)
    log.info("pool: all workers stopped")
    if metrics is not None:
        metrics.close()
    return 1 if failed else 0
