"""What the ``medserve audit`` commands do: verify the trail, export it as JSON lines.

A database shared by replicas holds one chain per replica (``audit_records.chain``). The trail is
their merge: every chain verifies on its own (an edited, deleted or reordered record is named with its
chain), and the records of all chains ordered by ``time`` are the fleet's history. Export writes each
chain in seq order; a record of a named chain carries a ``chain`` key in front of its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from medserve.audit.journal import Journal
from medserve.audit.record import AuditRecord, Verification, canonical_json, to_dict, to_json_line, verify
from medserve.audit.rows import MalformedRecord, chains, iter_records
from medserve.store.database import Database


def verify_audit(
    database: Database, journal_dir: Path | None = None, *, journal_chain: str = "", page: int = 1000
) -> Verification:
    """Verify every chain in the database; the first broken one is named. ``journal_dir`` is the
    journal of ``journal_chain`` (this data dir's replica), compared with that chain."""
    names = sorted(set(chains(database)) | ({journal_chain} if journal_dir is not None else set()))
    total = 0
    last: Verification | None = None
    for name in names:
        journal = journal_dir if name == journal_chain else None
        result = _verify_chain(database, name, journal, page)
        if not result.ok:
            return dataclasses.replace(result, chain=name, chains=len(names))
        total += result.count
        last = result
    if last is None:
        return Verification(True, 0, 0, "", chains=0)
    return dataclasses.replace(last, count=total, chain=journal_chain, chains=len(names))


def _verify_chain(database: Database, chain: str, journal_dir: Path | None, page: int) -> Verification:
    """Verify one chain in the database (read by seq in pages); then, with ``journal_dir``, check that
    every journal record the database also holds is identical there.

    The journal check catches what the chain alone cannot: a database rewritten from some record on
    with fresh hashes. Journal records beyond the database's head (not yet flushed) are no error.
    Raises :class:`StoreUnavailable` if the database cannot be read.
    """
    malformed: list[MalformedRecord] = []
    result = verify(_guarded(iter_records(database, chain=chain, page=page), malformed))
    if malformed and result.ok:
        bad = malformed[0]
        return Verification(
            False, result.count + 1, result.head_seq, result.head_hash, _as_seq(bad.seq), bad.reason
        )
    if not result.ok or journal_dir is None or not journal_dir.is_dir():
        return result
    journal = Journal(journal_dir, fsync=False)
    try:
        mismatch = _compare(journal.iter_records(page=page), database, chain, result.head_seq, page)
    finally:
        journal.close()
    if mismatch is not None:
        seq, reason = mismatch
        return Verification(False, result.count, result.head_seq, result.head_hash, seq, reason)
    return result


def _guarded(records: Iterator[AuditRecord], malformed: list[MalformedRecord]) -> Iterator[AuditRecord]:
    """``records`` until a malformed row, which is kept in ``malformed`` (verify then stops there)."""
    try:
        yield from records
    except MalformedRecord as exc:
        malformed.append(exc)


def _as_seq(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1


def _compare(
    journal_records: Iterator[AuditRecord], database: Database, chain: str, head_seq: int, page: int
) -> tuple[int, str] | None:
    """The first journal record (up to ``head_seq``) that the database lacks or holds differently."""
    stored: Iterator[AuditRecord] | None = None
    current: AuditRecord | None = None
    for record in journal_records:
        if record.seq > head_seq:
            return None
        if stored is None:
            stored = iter_records(database, chain=chain, after_seq=record.seq - 1, page=page)
        while current is None or current.seq < record.seq:
            current = next(stored, None)
            if current is None:
                return record.seq, "in the journal but missing from the database (deleted)"
        if current.seq != record.seq:
            return record.seq, "in the journal but missing from the database (deleted)"
        if current != record:
            return record.seq, "differs from the journal (the database record was changed)"
    return None


def export_audit(database: Database, out: TextIO, since_seq: int = 0, chain: str | None = None) -> int:
    """Write every record with seq above ``since_seq`` (of ``chain``, else of every chain) to ``out``
    as JSON lines; returns how many."""
    count = 0
    for name in [chain] if chain is not None else chains(database):
        for record in iter_records(database, chain=name, after_seq=since_seq):
            if name:
                line = canonical_json({"chain": name, **to_dict(record)}) + b"\n"
            else:
                line = to_json_line(record)
            out.write(line.decode("utf-8"))
            count += 1
    return count


def format_verification(result: Verification) -> str:
    if result.ok:
        if result.chains > 1:
            return f"audit trail intact: {result.count} records in {result.chains} chains"
        return f"audit trail intact: {result.count} records, head {result.head_hash}"
    where = f" of chain {result.chain}" if result.chain else ""
    return f"audit trail BROKEN at record seq {result.bad_seq}{where}: {result.reason}"
