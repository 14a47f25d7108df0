"""The Audit page: search the trail (time, principal, door, model, event, status, patient or study
pseudonym) and verify its hash chain. Admins only: the trail names every principal and patient
pseudonym (``medserve audit`` needs the store, i.e. the server's own rights, as well)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from medserve.audit.commands import verify_audit
from medserve.audit.record import Verification
from medserve.audit.search import AuditQuery, search
from medserve.console.parts import ConsoleParts
from medserve.values.access import Action, Caller
from medserve.values.errors import InvalidInput

FIELDS = ("since", "until", "principal", "door", "model", "event", "status", "patient", "study")


def query_from(params: Mapping[str, str], parts: ConsoleParts) -> AuditQuery:
    """The search a form asks for; ``patient`` matches a pseudonym, or a patient ID pseudonymised
    with the server's key (the ID itself is never stored or searched)."""
    values = {name: params.get(name, "").strip() for name in FIELDS}
    for name, value in values.items():
        if len(value) > 256:
            raise InvalidInput(f"'{name}' is longer than 256 characters")
    refs: tuple[str, ...] = ()
    if values["patient"]:
        refs = tuple(
            dict.fromkeys([values["patient"], parts.service.pseudonym("patient", values["patient"])])
        )
        refs = tuple(r for r in refs if r)
    before = params.get("before", "").strip()
    if before and not before.isdigit():
        raise InvalidInput("'before' must be a record number")
    return AuditQuery(
        since=values["since"],
        until=values["until"],
        principal=values["principal"],
        door=values["door"],
        model=values["model"],
        event=values["event"],
        status=values["status"],
        patient_refs=refs,
        study_ref=values["study"],
        before_seq=int(before) if before else None,
        limit=100,
    )


async def audit(parts: ConsoleParts, caller: Caller, params: Mapping[str, str]) -> dict[str, Any]:
    caller.principal.require(Action.MANAGE)
    query = query_from(params, parts)
    if parts.audit is not None:
        await asyncio.to_thread(parts.audit.flush, 5.0)  # what was just recorded is searchable
    records = await asyncio.to_thread(search, parts.database, query)
    return {
        "records": records,
        "form": {name: params.get(name, "") for name in FIELDS},
        "next_before": records[-1].seq if len(records) == query.limit else None,
    }


async def verify(parts: ConsoleParts, caller: Caller) -> Verification:
    caller.principal.require(Action.MANAGE)
    journal = None
    if parts.audit is not None:
        await asyncio.to_thread(parts.audit.flush, 5.0)
        journal = parts.audit.journal_dir
    return await asyncio.to_thread(verify_audit, parts.database, journal)
