"""DICOM Application Entity titles (PS3.5 value representation AE): 1 to 16 printable ASCII characters,
no backslash, leading and trailing spaces not significant."""

from __future__ import annotations

from medserve.values.errors import InvalidConfig, MedserveError

AE_TITLE_MAX = 16


def check_ae_title(value: object, field: str = "AE title", error: type[MedserveError] = InvalidConfig) -> str:
    """``value`` stripped, if it is a valid AE title; else raise ``error`` naming ``field``."""
    title = value.strip() if isinstance(value, str) else ""
    if not title or len(title) > AE_TITLE_MAX:
        raise error(f"{field} must be 1 to {AE_TITLE_MAX} characters, not {value!r}")
    if "\\" in title or any(not (0x20 <= ord(ch) < 0x7F) for ch in title):
        raise error(f"{field} {value!r} may hold only printable ASCII characters and no backslash")
    return title
