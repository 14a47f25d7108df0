"""Ed25519 signatures over a model artifact's SHA-256 digest, kept in ``<artifact>.sig``.

The signature file is a small JSON document::

    {"algorithm": "ed25519", "digest": "<sha256 hex>", "signer": "<fingerprint>",
     "signature": "<base64 ed25519 signature over the ASCII hex digest>"}

A key's fingerprint is the first 16 hex characters of the SHA-256 of its raw public key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medserve.values.digest import sha256_file
from medserve.values.errors import InvalidConfig, InvalidInput, ModelLoadError

ALGORITHM = "ed25519"
SIGNATURE_SUFFIX = ".sig"
_MAX_SIGNATURE_FILE = 64 * 1024
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("algorithm", "digest", "signer", "signature")


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the SHA-256 of the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_path(artifact: Path) -> Path:
    """Where an artifact's signature lives: ``<artifact>.sig`` next to it."""
    return artifact.with_name(artifact.name + SIGNATURE_SUFFIX)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_signing_key(private_path: Path, public_path: Path) -> str:
    """Write a new ed25519 key pair as PEM files (private one 0600); return its fingerprint.

    Existing files are never overwritten.
    """
    for path in (private_path, public_path):
        if path.exists():
            raise InvalidInput(f"{path} already exists; refusing to overwrite a key file")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    os.chmod(private_path, 0o600)  # the umask may have narrowed it; never widened
    _write_new(public_path, public_pem, 0o644)
    return fingerprint(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted ed25519 private key from a PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read private key: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidConfig(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidConfig(f"{path}: expected an ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An ed25519 public key from a PEM file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read public key: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidConfig(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidConfig(f"{path}: expected an ed25519 public key, got {type(key).__name__}")
    return key


def sign_artifact(artifact: Path, private_key: Path) -> Path:
    """Sign the artifact's SHA-256 digest; write and return ``<artifact>.sig`` (replacing one)."""
    if not artifact.is_file():
        raise InvalidInput(f"artifact {artifact} does not exist")
    key = load_private_key(private_key)
    digest = sha256_file(artifact)
    document = {
        "algorithm": ALGORITHM,
        "digest": digest,
        "signer": fingerprint(key.public_key()),
        "signature": base64.b64encode(key.sign(digest.encode("ascii"))).decode("ascii"),
    }
    target = signature_path(artifact)
    staging = target.with_name(target.name + ".tmp")
    staging.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    staging.replace(target)
    return target


def _read_signature(path: Path) -> dict[str, str]:
    """The signature file's four string fields; ``ModelLoadError`` when malformed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read signature file: {exc.strerror or exc}") from None
    if len(data) > _MAX_SIGNATURE_FILE:
        raise ModelLoadError(f"{path}: malformed signature file: larger than {_MAX_SIGNATURE_FILE} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: malformed signature file: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{path}: malformed signature file: expected a JSON object")
    missing = [f for f in _FIELDS if not isinstance(document.get(f), str)]
    if missing:
        raise ModelLoadError(
            f"{path}: malformed signature file: field(s) {', '.join(missing)} missing or not strings"
        )
    return {f: document[f] for f in _FIELDS}


class TrustedKeys:
    """The public keys whose signatures are accepted, by fingerprint."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, paths: list[Path]) -> TrustedKeys:
        """Read PEM public key files; ``InvalidConfig`` names a file that is not an ed25519 key."""
        keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            key = load_public_key(path)
            keys[fingerprint(key)] = key
        return cls(keys)

    @property
    def fingerprints(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify_bytes(self, signer: str, signature: str, data: bytes, what: str) -> None:
        """Check a base64 ed25519 ``signature`` of ``data`` by the trusted key ``signer``."""
        key = self._keys.get(signer)
        if key is None:
            trusted = ", ".join(self.fingerprints) or "none configured"
            raise ModelLoadError(f"{what}: signed by unknown key {signer!r} (trusted keys: {trusted})")
        try:
            key.verify(base64.b64decode(signature, validate=True), data)
        except (binascii.Error, ValueError):
            raise ModelLoadError(f"{what}: malformed signature: not base64") from None
        except InvalidSignature:
            raise ModelLoadError(f"{what}: bad signature: it does not verify with key {signer}") from None

    def verify(self, artifact_sig_path: Path, digest: str) -> str:
        """Check the signature file against the artifact's digest; return the signer's fingerprint."""
        path = artifact_sig_path
        fields = _read_signature(path)
        if fields["algorithm"] != ALGORITHM:
            raise ModelLoadError(
                f"{path}: unsupported signature algorithm '{fields['algorithm']}', expected {ALGORITHM}"
            )
        signed_digest = fields["digest"].lower()
        if not _HEX_DIGEST.fullmatch(signed_digest):
            raise ModelLoadError(f"{path}: malformed signature file: digest is not a SHA-256 hex digest")
        if signed_digest != digest.lower():
            raise ModelLoadError(
                f"{path}: the signed digest {signed_digest} differs from the artifact's {digest.lower()}; "
                "the artifact changed after it was signed"
            )
        signer = fields["signer"]
        key = self._keys.get(signer)
        if key is None:
            trusted = ", ".join(self.fingerprints) or "none configured"
            raise ModelLoadError(f"{path}: signed by unknown key {signer!r} (trusted keys: {trusted})")
        try:
            signature = base64.b64decode(fields["signature"], validate=True)
        except (binascii.Error, ValueError):
            raise ModelLoadError(f"{path}: malformed signature file: signature is not base64") from None
        try:
            key.verify(signature, signed_digest.encode("ascii"))
        except InvalidSignature:
            raise ModelLoadError(f"{path}: bad signature: it does not verify with key {signer}") from None
        return signer
