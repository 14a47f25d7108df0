"""The DICOM instance store: every received instance is on disk and in the database before it is
acknowledged, grouped by series with the series' state.

Files live at ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, written to a
temporary name, fsynced and renamed, so a crash never leaves a half-written instance under its name.
A UID is checked against DICOM's UID syntax before it becomes part of a path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from medserve.clinical.dicom.routing import series_attributes
from medserve.imaging.uploaders import with_uploader
from medserve.store.database import Database
from medserve.store.tables import DicomInstanceRow, DicomSeriesRow
from medserve.values.errors import InvalidInput
from medserve.values.files import fsync_directory

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Series states. ``receiving`` until the quiet time passes; then routed and processed.
RECEIVING, COMPLETE, PROCESSING, DONE = "receiving", "complete", "processing", "done"
UNMATCHED, REJECTED, FAILED = "unmatched", "rejected", "failed"


class NotDicom(InvalidInput):
    """The bytes are not a usable DICOM Part-10 instance."""


class Undecodable(NotDicom):
    """The instance's pixel data is in a transfer syntax this server has no decoder for."""


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    patient_id: str
    duplicate: bool


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise NotDicom(f"the instance has no {keyword}")
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise NotDicom(f"{keyword} '{value[:70]}' is not a valid DICOM UID")
    return value


def parse_instance(data: bytes) -> pydicom.Dataset:
    """The header of a DICOM Part-10 file (pixel data not decoded); ``NotDicom`` when it is not one."""
    if len(data) < 132:
        raise NotDicom(f"not a DICOM file: only {len(data)} bytes")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
        ds.get("PixelData")  # reading the last element proves the file is not truncated before it
    except InvalidDicomError as exc:
        raise NotDicom(f"not a DICOM Part-10 file: {exc}") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotDicom(f"the DICOM file is truncated or malformed: {type(exc).__name__}: {exc}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise NotDicom("the DICOM file has no TransferSyntaxUID in its file meta information")
    pixel = ds.get("PixelData")
    syntax = ds.file_meta.TransferSyntaxUID
    if pixel is not None and syntax.is_compressed:
        _require_decoder(syntax)
    elif pixel is not None and syntax.is_little_endian is not None:
        expected = _expected_native_length(ds)
        if expected and len(pixel) < expected:
            raise NotDicom(f"the pixel data is truncated: {len(pixel)} of {expected} bytes")
    return ds


def _require_decoder(syntax: UID) -> None:
    """Raise ``Undecodable`` unless pixel data in ``syntax`` can be decoded here."""
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise Undecodable(
            f"transfer syntax {syntax.name} ({syntax}): this server cannot decode its pixel data; "
            "send it uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE"
        )


def _expected_native_length(ds: pydicom.Dataset) -> int:
    """The bytes native pixel data needs (YBR_FULL_422 stores 2 samples' worth per pixel, not 3)."""
    try:
        return int(get_expected_length(ds, "bytes"))
    except (AttributeError, TypeError, ValueError, KeyError):
        return 0


def _now() -> datetime:
    return datetime.now(UTC)


class InstanceStore:
    """Writes instances to disk and records them; thread-safe (doors call it from their threads)."""

    def __init__(self, database: Database, root: Path) -> None:
        self.database = database
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path_of(self, relative: str) -> Path:
        return self.root / relative

    def store(
        self, data: bytes, ds: pydicom.Dataset | None = None, uploader: Mapping[str, Any] | None = None
    ) -> StoredInstance:
        """Persist one instance (``data`` is the whole Part-10 file); returns what was stored.

        Raises ``NotDicom`` for bytes that are not a usable instance. An instance received again
        (same SOP Instance UID) replaces the file and counts once. ``uploader``
        (:func:`medserve.imaging.uploaders.record_of`) is kept with the series.
        """
        ds = parse_instance(data) if ds is None else ds
        study, series, sop = (
            _uid(ds, "StudyInstanceUID"),
            _uid(ds, "SeriesInstanceUID"),
            _uid(ds, "SOPInstanceUID"),
        )
        sop_class = str(ds.get("SOPClassUID", "") or "")
        syntax = str(ds.file_meta.TransferSyntaxUID)
        relative = f"{study}/{series}/{sop}.dcm"
        _write_durably(self.root / relative, data)
        now = _now()
        # Replicas sharing the database may receive instances of one series at once: the series row is
        # locked while it is counted, and the loser of a race to create it (or the instance) retries.
        for attempt in (1, 2):
            try:
                with self._lock, self.database.session() as session, session.begin():
                    instance = session.get(DicomInstanceRow, sop)
                    duplicate = instance is not None
                    if instance is None:
                        session.add(
                            DicomInstanceRow(
                                sop_uid=sop,
                                series_uid=series,
                                sop_class_uid=sop_class,
                                transfer_syntax=syntax,
                                path=relative,
                                size=len(data),
                                received_at=now,
                            )
                        )
                    else:
                        instance.size, instance.transfer_syntax, instance.received_at = len(data), syntax, now
                    row = session.get(DicomSeriesRow, series, with_for_update=True)
                    if row is None:
                        session.add(
                            DicomSeriesRow(
                                series_uid=series,
                                study_uid=study,
                                modality=str(ds.get("Modality", "") or ""),
                                attributes=with_uploader(series_attributes(ds), uploader)
                                if uploader
                                else series_attributes(ds),
                                instances=1,
                                state=RECEIVING,
                                first_received_at=now,
                                last_received_at=now,
                                updated_at=now,
                            )
                        )
                    else:
                        if not duplicate:
                            row.instances += 1
                        if uploader:
                            row.attributes = with_uploader(row.attributes, uploader)
                        if row.state != RECEIVING:
                            row.reason = (
                                f"an instance arrived after the series was {row.state}: processed again"
                            )
                            row.state = RECEIVING
                        row.last_received_at = row.updated_at = now
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        return StoredInstance(
            study, series, sop, sop_class, syntax, str(ds.get("PatientID", "") or ""), duplicate
        )

    def instance_paths(self, series_uid: str) -> list[Path]:
        with self.database.session() as session:
            rows = session.scalars(
                select(DicomInstanceRow.path).where(DicomInstanceRow.series_uid == series_uid)
            ).all()
        return [self.root / p for p in rows]


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    fsync_directory(path.parent, strict=True)
