"""The hub's manifest for an edge group: which version of each model the group serves, with each
artifact's digest, its publisher's signature and its config.yaml, signed as a whole by the hub's key.

A signed manifest is ``{"manifest": {...}, "signer": "<fingerprint>", "signature": "<base64>"}``; the
signature is ed25519 over the canonical JSON of ``manifest`` (UTF-8, sorted keys, no whitespace).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medserve.security.signing import TrustedKeys, fingerprint
from medserve.values.errors import InvalidInput, ModelLoadError

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed document of ``manifest``."""
    signature = base64.b64encode(key.sign(canonical(manifest))).decode("ascii")
    return {"manifest": manifest, "signer": fingerprint(key.public_key()), "signature": signature}


@dataclass(frozen=True, slots=True)
class Release:
    """One model version in a manifest."""

    model: str
    version: int
    artifact: str
    digest: str
    signature: dict[str, Any]  # the publisher's <artifact>.sig document
    config: str  # the model's config.yaml text
    published_at: str
    published_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "artifact": self.artifact,
            "digest": self.digest,
            "signature": self.signature,
            "config": self.config,
            "published_at": self.published_at,
            "published_by": self.published_by,
        }


def valid_name(value: object, what: str) -> str:
    """A model or group name: letters, digits, ``_ . -``; no path separators."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise InvalidInput(f"{what} must be 1-256 letters, digits, '_', '.' or '-', not {value!r}")
    return value


def _release(item: object, index: int) -> Release:
    where = f"manifest release {index}"
    if not isinstance(item, dict):
        raise ModelLoadError(f"{where}: not an object")
    strings = ("model", "artifact", "digest", "config", "published_at", "published_by")
    wrong = [name for name in strings if not isinstance(item.get(name), str)]
    version = item.get("version")
    if wrong or not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelLoadError(f"{where}: fields {wrong or ['version']} missing or of the wrong type")
    if not isinstance(item.get("signature"), dict):
        raise ModelLoadError(f"{where}: field 'signature' is not an object")
    if not _HEX_DIGEST.fullmatch(item["digest"]):
        raise ModelLoadError(f"{where}: digest is not a SHA-256 hex digest")
    artifact = item["artifact"]
    if "/" in artifact or "\\" in artifact or artifact in ("", ".", ".."):
        raise ModelLoadError(f"{where}: artifact {artifact!r} is not a plain file name")
    try:
        valid_name(item["model"], f"{where}: model")
    except InvalidInput as exc:
        raise ModelLoadError(str(exc)) from None
    return Release(
        item["model"],
        version,
        artifact,
        item["digest"],
        dict(item["signature"]),
        item["config"],
        item["published_at"],
        item["published_by"],
    )


def verify_manifest(document: object, keys: TrustedKeys, group: str) -> list[Release]:
    """The releases of a signed manifest for ``group``, once its signature verifies with a trusted key;
    ``ModelLoadError`` names what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("manifest"), dict):
        raise ModelLoadError("hub manifest: not a signed manifest document")
    signer, signature = document.get("signer"), document.get("signature")
    if not isinstance(signer, str) or not isinstance(signature, str):
        raise ModelLoadError("hub manifest: signer or signature missing")
    manifest: dict[str, Any] = document["manifest"]
    keys.verify_bytes(signer, signature, canonical(manifest), "hub manifest")
    if manifest.get("group") != group:
        raise ModelLoadError(f"hub manifest: it is for group {manifest.get('group')!r}, not {group!r}")
    releases = manifest.get("releases")
    if not isinstance(releases, list):
        raise ModelLoadError("hub manifest: field 'releases' is not a list")
    return [_release(item, index) for index, item in enumerate(releases)]
