"""The hub's uplink receiver: each item of an edge once (its idempotency key), audit ranges checked
for continuity and hashes against the edge's chain head before they are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from medserve.audit.record import GENESIS, from_dict, verify
from medserve.store.database import Database
from medserve.store.tables import HubAuditHeadRow, HubUplinkRow
from medserve.values.errors import InvalidInput, StoreUnavailable

KINDS = ("audit", "sketch", "job", "alert")
MAX_ITEMS = 500


@dataclass(slots=True)
class Receipt:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # key -> why (the rest of the batch waits)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "refused": self.refused}


def parse_items(document: object) -> list[tuple[str, str, dict[str, Any]]]:
    """``{"items": [{"key", "kind", "payload"}, ...]}``; ``InvalidInput`` names the bad item."""
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise InvalidInput("uplink body must be a JSON object with an 'items' list")
    items = document["items"]
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"uplink carries {len(items)} items; at most {MAX_ITEMS} per request")
    parsed: list[tuple[str, str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"uplink item {index} is not an object")
        key, kind, payload = item.get("key"), item.get("kind"), item.get("payload")
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise InvalidInput(f"uplink item {index}: 'key' must be a string of 1-200 characters")
        if kind not in KINDS:
            raise InvalidInput(f"uplink item {index}: 'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
        if not isinstance(payload, dict):
            raise InvalidInput(f"uplink item {index}: 'payload' must be an object")
        parsed.append((key, str(kind), payload))
    return parsed


def _check_audit(s: Session, edge: str, payload: dict[str, Any]) -> str:
    """Why an audit range cannot be kept ("" when it continues the edge's chain); advances the head."""
    chain, records = payload.get("chain"), payload.get("records")
    if not isinstance(chain, str) or not isinstance(records, list) or not records:
        return "audit range needs a 'chain' name and a non-empty 'records' list"
    try:
        parsed = [from_dict(r) for r in records]
    except InvalidInput as exc:
        return f"audit range: {exc}"
    head = s.get(HubAuditHeadRow, (edge, chain))
    start_seq, start_hash = (head.seq + 1, head.hash) if head is not None else (1, GENESIS)
    if parsed[0].seq != start_seq:
        return f"audit chain {chain!r}: the range starts at seq {parsed[0].seq}, the hub expects {start_seq}"
    outcome = verify(parsed, start_seq=start_seq, start_hash=start_hash)
    if not outcome.ok:
        return f"audit chain {chain!r}: record {outcome.bad_seq}: {outcome.reason}"
    if head is None:
        s.add(HubAuditHeadRow(edge=edge, chain=chain, seq=outcome.head_seq, hash=outcome.head_hash))
    else:
        head.seq, head.hash = outcome.head_seq, outcome.head_hash
    return ""


def receive(database: Database, edge: str, items: list[tuple[str, str, dict[str, Any]]]) -> Receipt:
    """Keep each item not received before, in order; stop at the first refused one."""
    receipt = Receipt()
    for key, kind, payload in items:
        try:
            with database.session() as s, s.begin():
                if s.get(HubUplinkRow, (edge, key)) is not None:
                    receipt.duplicates.append(key)
                    continue
                why = _check_audit(s, edge, payload) if kind == "audit" else ""
                if why:
                    receipt.refused[key] = why
                    break
                s.add(
                    HubUplinkRow(
                        edge=edge, key=key, kind=kind, payload=payload, received_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:  # the same key from a concurrent retry: kept once
            receipt.duplicates.append(key)
            continue
        except OperationalError as exc:
            raise StoreUnavailable(f"hub store: {exc.orig or exc}") from None
        receipt.accepted.append(key)
    return receipt
