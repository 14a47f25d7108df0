"""A replica's id: stable across its restarts, different from every other replica's.

``replica_id`` in the settings wins (on Kubernetes, the pod's name from the downward API; a
StatefulSet's names are stable). Otherwise the id is made once, ``<hostname>-<random>``, and kept in
``<data_dir>/replica-id``, so a replica restarted on its data dir continues its own audit chain and
takes back its own leases at once.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

from medserve.values.errors import InvalidConfig

_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def check_replica_id(value: str) -> str:
    """``value`` if it can name a replica (letters, digits, ``._:@-``; at most 128), else InvalidConfig."""
    if not _VALID.match(value):
        raise InvalidConfig(
            f"replica id {value!r} is not usable: use 1 to 128 letters, digits and . _ : @ - "
            "(starting with a letter or digit)"
        )
    return value


def replica_id(configured: str, data_dir: Path) -> str:
    """The configured id, else the one kept in ``data_dir`` (made and kept on first use)."""
    if configured:
        return check_replica_id(configured)
    path = data_dir / "replica-id"
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return check_replica_id(kept)
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:100] or "replica"
    made = f"{host}-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(made + "\n", encoding="utf-8")
    temporary.replace(path)
    return made
