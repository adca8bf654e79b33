"""The peer queues of the noop benchmark, each with its own normal worker; run as a process.

    python -m bench.peers SYSTEM install|enqueue|work URL [--jobs N] [--batch B] [--concurrency C]

pgqueuer: a QueueManager with one async no-op entrypoint, ``run(batch_size=B, mode=drain)``.
procrastinate: an App with one async no-op task, ``run_worker_async(concurrency=C, wait=False)``
(exits when no job is left), jobs kept as ``succeeded`` (its default).
"""

from __future__ import annotations

import argparse
import asyncio

import psycopg


async def _pgqueuer(action: str, url: str, jobs: int, batch: int, concurrency: int) -> None:
    from pgqueuer import PgQueuer
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    queries = Queries.from_psycopg_connection(conn)
    if action == "install":
        await queries.install()
    elif action == "enqueue":
        for start in range(0, jobs, 5000):
            n = min(5000, jobs - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    else:
        pgq = PgQueuer.from_psycopg_connection(conn)

        @pgq.entrypoint("noop")
        async def noop(job: object) -> None:
            return None

        await pgq.qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
    await conn.close()


async def _procrastinate(action: str, url: str, jobs: int, batch: int, concurrency: int) -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        if action == "install":
            await app.schema_manager.apply_schema_async()
        elif action == "enqueue":
            for start in range(0, jobs, 5000):
                await noop.batch_defer_async(*[{} for _ in range(min(5000, jobs - start))])
        else:
            await app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["pgqueuer", "procrastinate"])
    parser.add_argument("action", choices=["install", "enqueue", "work"])
    parser.add_argument("url")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=10)
    a = parser.parse_args()
    run = _pgqueuer if a.system == "pgqueuer" else _procrastinate
    asyncio.run(run(a.action, a.url, a.jobs, a.batch, a.concurrency))


if __name__ == "__main__":
    main()
