"""A folder of DICOM files as series: headers only, grouped by SeriesInstanceUID, in a stable order.

``scan_folder`` walks a folder recursively (hidden files and folders skipped), reads each file's
header up to the pixel data and only the attributes routing needs, and groups the files by
SeriesInstanceUID. Series come sorted by (StudyInstanceUID, SeriesInstanceUID) and each series' files
by path; files that are not DICOM, cannot be read, carry no usable UIDs or contradict their series are
listed apart, sorted by path. A DICOMDIR (a media directory, not an instance) is skipped. Memory:
the paths, plus one series' routing attributes per series.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from medserve.clinical.dicom.routing import SERIES_KEYWORDS, series_attributes

#: The attributes read from each header: what routing looks at, the patient (for the audit record).
HEADER_KEYWORDS: tuple[str, ...] = (*SERIES_KEYWORDS, "PatientID")

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_MAX = 64


@dataclass(frozen=True)
class ScannedSeries:
    """One series found in the folder: its UIDs, routing attributes and files."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    patient_id: str
    attributes: Mapping[str, Any]
    """``routing.series_attributes`` of the series' first file in walk order."""
    paths: tuple[Path, ...]
    """The series' files, sorted."""


@dataclass(frozen=True)
class UnreadableFile:
    """A file that is not an instance of a series this scan can use, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FolderScan:
    series: tuple[ScannedSeries, ...]
    """Sorted by (StudyInstanceUID, SeriesInstanceUID)."""
    unreadable: tuple[UnreadableFile, ...]
    """Sorted by path."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the scan keeps of one readable header."""

    study: str
    series: str
    patient_id: str
    attributes: dict[str, Any]


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular, non-hidden file under ``root``, folders and names in sorted order."""
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(folder) / name
            if not name.startswith(".") and path.is_file():
                yield path


def _valid_uid(value: str) -> bool:
    return len(value) <= _UID_MAX and _UID.fullmatch(value) is not None


def read_header(path: Path) -> InstanceHeader | str | None:
    """The header of one file: its series, or the reason it cannot be used (a string), or None for a
    DICOMDIR (skipped)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
    except InvalidDicomError:
        return "not a DICOM file (no DICM preamble)"
    except (OSError, ValueError, EOFError, struct.error) as exc:
        return f"unreadable DICOM header: {exc}"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        return None
    uids: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            return f"no {keyword}: not an instance of a series"
        if not _valid_uid(value):
            return f"{keyword} {value[:80]!r} is not a valid UID (digits and dots, at most {_UID_MAX})"
        uids[keyword] = value
    return InstanceHeader(
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        str(ds.get("PatientID", "") or "").strip(),
        series_attributes(ds),
    )


def first_series_file(root: Path) -> Path | None:
    """The first file (in walk order) that is an instance of a series, or None when there is none."""
    for path in walk_files(root):
        if isinstance(read_header(path), InstanceHeader):
            return path
    return None


def scan_folder(root: Path) -> FolderScan:
    """Every series under ``root`` and every file that could not be used (see the module's notes)."""
    first: dict[str, InstanceHeader] = {}
    paths: dict[str, list[Path]] = {}
    unreadable: list[UnreadableFile] = []
    for path in walk_files(root):
        header = read_header(path)
        if header is None:
            continue
        if isinstance(header, str):
            unreadable.append(UnreadableFile(path, header))
            continue
        known = first.setdefault(header.series, header)
        if known.study != header.study:
            unreadable.append(
                UnreadableFile(
                    path,
                    f"SeriesInstanceUID {header.series} belongs to study {known.study} in other files, "
                    f"to study {header.study} in this one",
                )
            )
            continue
        paths.setdefault(header.series, []).append(path)
    series = [
        ScannedSeries(
            study_instance_uid=header.study,
            series_instance_uid=uid,
            modality=str(header.attributes.get("Modality") or ""),
            patient_id=header.patient_id,
            attributes=header.attributes,
            paths=tuple(sorted(paths[uid])),
        )
        for uid, header in first.items()
    ]
    series.sort(key=lambda s: (s.study_instance_uid, s.series_instance_uid))
    unreadable.sort(key=lambda u: u.path)
    return FolderScan(tuple(series), tuple(unreadable))
