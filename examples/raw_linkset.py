"""Seed 001's raw-linkset backfill as a tidegate handler (docs/handlers.md walks through it).

Advisory observations are JSON documents in ``concelier.advisory_observations`` with a ``version``
column (optimistic concurrency) and ``updated_at``. Documents written before the raw linkset existed
lack ``rawLinkset``: the upstream aliases, package URLs, CPEs and references in their upstream order,
duplicates kept, each with the JSON pointer it came from. This handler adds it in place:

* idempotent: a document that has ``rawLinkset`` is left alone, so a rerun changes nothing;
* optimistic: one ``UPDATE ... WHERE version = <the version read>`` per batch; a document another
  writer changed since is read again and written again, at most ``ATTEMPTS`` times in all;
* ``updated_at`` is kept: the backfill adds a projection, it is not a change of the observation.

Deploy the module (here ``TIDEGATE_HANDLERS=examples.raw_linkset``) and enqueue::

    tidegate enqueue backfill-range --handler raw_linkset --from 2000-01-01 --to 2025-10-31 --owner concelier
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate import ItemHandler, register

ATTEMPTS = 5  # writes of a batch's documents before the batch gives up (tidegate then retries the batch)
FIELDS = (("aliases", "aliases", None), ("purls", "affected", "purl"), ("cpes", "affected", "cpe"))

# One statement per attempt for the whole batch. `version = r.version` is the optimistic check: a document
# changed since the batch read it does not match and its id is missing from RETURNING. `updated_at` is
# not in SET, so it keeps its value.
SET_RAW_LINKSET = text("""
    UPDATE concelier.advisory_observations AS o
    SET document = o.document || jsonb_build_object('rawLinkset', r.raw_linkset), version = o.version + 1
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id bigint, version bigint, raw_linkset jsonb)
    WHERE o.id = r.id AND o.version = r.version
    RETURNING o.id
""")
READ_AGAIN = text("SELECT id, version, document FROM concelier.advisory_observations WHERE id = ANY(:ids)")


class Contended(Exception):
    """Documents kept changing under the backfill: the batch rolls back and tidegate retries it later."""


def raw_linkset(document: Any) -> dict[str, list[dict[str, str]]]:
    """The raw linkset of one observation, from its upstream content; raises ValueError for a bad document."""
    raw = document.get("content", {}).get("raw") if isinstance(document, dict) else None
    if not isinstance(raw, dict):
        raise ValueError("content.raw is missing or not an object")
    linkset: dict[str, list[dict[str, str]]] = {}
    for field, array, member in FIELDS:
        linkset[field] = []
        for i, item in enumerate(raw.get(array) or []):
            value = item if member is None else (item.get(member) if isinstance(item, dict) else None)
            pointer = f"/content/raw/{array}/{i}" + (f"/{member}" if member else "")
            if value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"{pointer} is {type(value).__name__}, expected a string")
                linkset[field].append({"value": value, "pointer": pointer})
    linkset["references"] = []
    for i, ref in enumerate(raw.get("references") or []):
        url = ref.get("url") if isinstance(ref, dict) else None
        if not isinstance(url, str):
            raise ValueError(f"/content/raw/references/{i} has no url")
        linkset["references"].append({"type": ref.get("type"), "url": url, "pointer": f"/content/raw/references/{i}"})
    return linkset


class RawLinkset(ItemHandler):
    name = "raw_linkset"
    source = "concelier.advisory_observations"  # the defaults of `enqueue --handler raw_linkset`
    key = "created_at"
    writes = ["concelier.advisory_observations"]  # the autovacuum gate watches it
    derived = {"table": "concelier.advisory_observations", "key": ["id"]}  # for `tidegate verify`

    def transform(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        if isinstance(row["document"], dict) and "rawLinkset" in row["document"]:
            return []  # backfilled already, or written by code that knows the field: left alone
        return [{"id": row["id"], "version": row["version"], "raw_linkset": raw_linkset(row["document"])}]

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> None:
        pending = records
        for _ in range(ATTEMPTS):
            written = set(conn.execute(SET_RAW_LINKSET, {"rows": json.dumps(pending)}).scalars())
            changed = [r["id"] for r in pending if r["id"] not in written]
            if not changed:
                return
            # a new statement sees what the other writer committed: derive from that version
            again = conn.execute(READ_AGAIN, {"ids": changed}).mappings()
            try:
                pending = [record for row in again for record in self.transform(row)]
            except ValueError as err:  # a bad item now: raised from write, a ValueError would fail the job
                raise Contended(f"an observation changed into a bad one: {err}") from err
            if not pending:
                return
        raise Contended(f"{len(pending)} observations changed under each of {ATTEMPTS} writes,"
                        f" ids {sorted(r['id'] for r in pending)[:10]}")

    def check_row(self, conn: Connection, row: Mapping[str, Any]) -> list[str]:
        have = row["document"].get("rawLinkset")
        want = raw_linkset({k: v for k, v in row["document"].items() if k != "rawLinkset"})
        return [] if have == want else [f"observation {row['id']}: rawLinkset differs from its content"]


RAW_LINKSET = register(RawLinkset())
