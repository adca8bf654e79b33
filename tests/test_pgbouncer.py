"""Through PgBouncer in transaction mode: the kill storm again, same guarantees.

tidegate keeps no session state (no advisory locks, prepared statements or
LISTEN), so a transaction-pooling bouncer in front of the workers changes nothing.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import enqueue_items, job_row, wait_for
from tests.fixtures import log_report, make_items, slow_handler
from tests.ports import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(PGBOUNCER),
                       reason="pgbouncer is not installed (make system-deps installs Debian's package)"),
]


@pytest.fixture
def bouncer(db_url):  # type: ignore[no-untyped-def]
    url = make_url(db_url)
    host = url.query.get("host") or url.host or "127.0.0.1"
    if isinstance(host, tuple):
        host = host[0]
    workdir = Path(tempfile.mkdtemp(prefix="tidegate-pgbouncer-"))  # outside pytest's 0700 tree
    workdir.chmod(0o777)
    port = free_port()
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{url.database} = host={host} port={url.port or 5432} dbname={url.database}"
        f" user={url.username or 'postgres'}\n"  # auth_type=any needs the server user here
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 6\n"
        "server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {workdir}/pgbouncer.log\npidfile = {workdir}/pgbouncer.pid\n"
    )
    ini.chmod(0o644)
    args = [PGBOUNCER, str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root; run it as whoever can reach the server
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        args[1:1] = ["-u", owner]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"pgbouncer did not start: {proc.stdout.read() if proc.stdout else ''}")
    user = url.username or "postgres"
    yield f"postgresql://{user}@127.0.0.1:{port}/{url.database}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


# short in make test; make test-chaos runs the long ones
SIZES = [pytest.param((3000, 6), id="short"), pytest.param((30000, 40), id="long", marks=pytest.mark.chaos)]
ARCHIVE_SIZES = [pytest.param((2000, 3), id="short"), pytest.param((40000, 20), id="long", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("size", SIZES)
def test_kill_storm_through_pgbouncer_transaction_pooling(engine, db_url, tmp_path, pools, bouncer, size):
    items, storm = size
    make_items(engine, items)
    # 0.1 s a batch: 3 workers need 3.3 s or more for the batches of the short size, longer than 3 kills at
    # most a second apart take (0.02 s let a quiet machine finish after 2 kills: the test then failed)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.1), batch_size=30, concurrency=3)
    pool = pools("--concurrency", "3", "--lease", "2", url=bouncer)
    rng = random.Random(4)
    kills = 0
    while kills < storm and job_row(engine, job).status != "done":
        time.sleep(rng.uniform(0.3, 1.0))
        workers = pool.workers()
        if workers:
            rng.choice(workers).send_signal(signal.SIGKILL)
            kills += 1
    wait_for(lambda: job_row(engine, job).status == "done", timeout=900, what="done through pgbouncer")
    assert pool.terminate() == 0
    assert kills >= 3
    assert log_report(engine) == {"logged": items, "distinct_keys": items, "items": items, "missing": 0}
    assert job_row(engine, job).processed_count == items
    assert Path(tmp_path).exists()


@pytest.mark.parametrize("size", ARCHIVE_SIZES)
def test_archive_kill_storm_through_pgbouncer_transaction_pooling(engine, db_url, pools, bouncer, size):
    from tests.test_archive_safety import kill_storm

    streams, kills = size
    kill_storm(engine, db_url, pools, streams=streams, kills=kills, seed=5, pool_url=bouncer)
