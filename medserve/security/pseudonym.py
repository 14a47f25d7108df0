"""Keyed pseudonyms: stable references for audit records and stable replacement DICOM UIDs.

Both come from HMAC-SHA256 under one secret key, so the same input maps to the same output on
every run with the same key, and nobody without the key can compute (or confirm a guess of) the
mapping. The message is ``kind``, a NUL byte, then ``value`` (UTF-8): the separator keeps
``("ab", "c")`` and ``("a", "bc")`` apart.

UIDs are ``2.25.<decimal>`` (PS3.5 B.2, a UUID as a decimal integer): the first 128 bits of
the HMAC of ``("uid", original)``, with the version and variant bits set as for an RFC 9562
version 8 (custom) UUID, so 122 bits come from the HMAC. The result has at most 44 characters.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from medserve.values.errors import InvalidConfig, InvalidInput

log = logging.getLogger(__name__)

KEY_BYTES = 32
MIN_KEY_BYTES = 16
REF_HEX_CHARS = 32
UID_ROOT = "2.25."
MAX_UID_CHARS = 64

_VERSION_MASK = ~(0xF << 76) & ((1 << 128) - 1)
_VERSION_8 = 0x8 << 76
_VARIANT_MASK = ~(0b11 << 62) & ((1 << 128) - 1)
_VARIANT_RFC = 0b10 << 62


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms under one secret key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise InvalidConfig(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(<key hidden>)"

    def _digest(self, kind: str, value: str) -> bytes:
        if not kind:
            raise InvalidInput("pseudonym kind must not be empty")
        message = kind.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def ref(self, kind: str, value: str) -> str:
        """32 hex characters naming ``value`` of ``kind`` (e.g. "patient", "study"); "" for ""."""
        if not value:
            return ""
        return self._digest(kind, value).hex()[:REF_HEX_CHARS]

    def uid(self, original_uid: str) -> str:
        """A valid DICOM UID ``2.25.<decimal>`` standing for ``original_uid``; "" for ""."""
        original = original_uid.strip().rstrip("\x00")
        if not original:
            return ""
        number = int.from_bytes(self._digest("uid", original)[:16], "big")
        number = (number & _VERSION_MASK) | _VERSION_8
        number = (number & _VARIANT_MASK) | _VARIANT_RFC
        return f"{UID_ROOT}{number}"


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new random 32-byte key, written with mode 0600, when there is none.

    The new key is written to a temporary file in the same folder and hard-linked into place,
    so a reader never sees a partial key and two processes racing here end up with one key.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o600)
        try:
            os.link(staging, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        except OSError:  # no hard links on this file system: rename, with a small race window
            if not path.exists():
                os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read pseudonym key: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise InvalidConfig(f"{path}: pseudonym key must be {KEY_BYTES} bytes, found {len(key)}")
    if mode & 0o077:
        log.warning("%s: pseudonym key is readable by group or others (mode %o)", path, mode & 0o777)
    return key
