"""DICOM peers kept in the store: the Storage SCP lets a calling AE title in from the association after
it is added (by another process, through another object), with its grants, and rejects it again once
it is removed; no restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from medserve.security.dicom_peers import DicomPeers
from medserve.store.database import Database
from medserve.store.migrate import upgrade
from medserve.transport.dicom_status import StoreStatus
from medserve.transport.dimse import StorageSCP, ingesting
from medserve.values.access import Caller, Role
from medserve.values.errors import InvalidInput

CT = Path(get_testdata_file("CT_small.dcm", download=False))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'medserve.db'}")
    upgrade(database.engine)
    yield database
    database.dispose()


def test_add_list_remove_and_grants(db: Database) -> None:
    peers = DicomPeers(db)
    assert peers.list() == [] and peers.titles() == frozenset()
    peer = peers.add("  CT_SCANNER_1 ", ["lung", "ct_seg", "lung"], name="CT room 1")
    assert peer.ae_title == "CT_SCANNER_1" and peer.models == ("ct_seg", "lung") and peer.name == "CT room 1"
    everything = peers.add("PACS", ["*"])
    assert everything.models is None
    assert [p.ae_title for p in peers.list()] == ["CT_SCANNER_1", "PACS"]

    principal = peers.principal_for("CT_SCANNER_1")
    assert principal is not None and principal.role is Role.SERVICE
    assert principal.name == "aet:CT_SCANNER_1" and principal.credential == "aet:CT_SCANNER_1"
    assert principal.models == frozenset({"ct_seg", "lung"})
    pacs = peers.principal_for("PACS")
    assert pacs is not None and pacs.models is None
    assert peers.principal_for("UNKNOWN") is None

    peers.add("CT_SCANNER_1", ["ct_seg"])  # new grants replace the old ones
    assert peers.principal_for("CT_SCANNER_1").models == frozenset({"ct_seg"})  # type: ignore[union-attr]
    assert peers.remove("CT_SCANNER_1") and not peers.remove("CT_SCANNER_1")
    assert peers.titles() == frozenset({"PACS"}) and peers.principal_for("CT_SCANNER_1") is None


@pytest.mark.parametrize("title", ["", "   ", "X" * 17, "BACK\\SLASH", "TAB\tTITLE", "ÄE"])
def test_invalid_titles_are_refused_by_name(db: Database, title: str) -> None:
    with pytest.raises(InvalidInput, match="calling AE title"):
        DicomPeers(db).add(title)


def test_a_peer_added_elsewhere_is_seen_at_once_for_a_title_missing_from_the_cache(db: Database) -> None:
    server_side, command_line = DicomPeers(db, cache_ttl=3600), DicomPeers(db)
    assert server_side.principal_for("MODALITY") is None  # cached: no peers at all
    command_line.add("MODALITY", ["ct_seg"])
    found = server_side.principal_for("MODALITY")  # a miss reads the store again
    assert found is not None and found.models == frozenset({"ct_seg"})


def _associate(port: int, calling: str) -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="MEDSERVE")


def test_the_scp_follows_the_store_without_a_restart(db: Database, tmp_path: Path) -> None:
    peers = DicomPeers(db, cache_ttl=3600)  # the server's object; changes come from another process
    callers: list[Caller] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def ingest(encoded: bytes, caller: Caller) -> None:
        callers.append(caller)

    scp = StorageSCP(
        "MEDSERVE",
        ingesting(ingest, loop, timeout_s=10, principals=peers.principal_for),
        host="127.0.0.1",
        port=0,
        allowed_calling_aets=peers.titles,
        acse_timeout=5,
        dimse_timeout=5,
        network_timeout=5,
    )
    scp.start()
    cli = [sys.executable, "-m", "medserve", "dicom", "peers"]
    store = ["--data-dir", str(tmp_path)]  # its medserve.db is the store the SCP reads
    try:
        refused = _associate(scp.port, "MODALITY")
        assert refused.is_rejected  # type: ignore[attr-defined]

        added = subprocess.run(
            [*cli, "add", "MODALITY", "--models", "ct_seg", *store],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert added.returncode == 0, added.stderr
        assert "DICOM peer MODALITY" in added.stdout and "ct_seg" in added.stdout
        listed = subprocess.run([*cli, "list", *store], capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and "MODALITY" in listed.stdout and "ct_seg" in listed.stdout

        assoc = _associate(scp.port, "MODALITY")
        assert assoc.is_established  # type: ignore[attr-defined]
        status = assoc.send_c_store(CT)  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
        assert status.Status == StoreStatus.SUCCESS
        assert [c.principal.name for c in callers] == ["aet:MODALITY"]
        assert callers[0].principal.models == frozenset({"ct_seg"}) and callers[0].door == "dimse"

        removed = subprocess.run(
            [*cli, "remove", "MODALITY", *store], capture_output=True, text=True, timeout=120
        )
        assert removed.returncode == 0, removed.stderr
        again = subprocess.run(
            [*cli, "remove", "MODALITY", *store], capture_output=True, text=True, timeout=120
        )
        assert again.returncode != 0 and "no DICOM peer with AE title 'MODALITY'" in again.stderr
        assert _associate(scp.port, "MODALITY").is_rejected  # type: ignore[attr-defined]
        assert scp.counts["rejected"] == 2
    finally:
        scp.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
