"""Ed25519 artifact signatures: sign, verify, and every refusal."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medserve.security.signing import (
    TrustedKeys,
    create_signing_key,
    sign_artifact,
    signature_path,
)
from medserve.values.digest import sha256_file
from medserve.values.errors import InvalidConfig, InvalidInput, ModelLoadError


def _key(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    return private, public, create_signing_key(private, public)


def _artifact(tmp_path: Path, content: bytes = b"model bytes") -> Path:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(content)
    return artifact


def test_sign_and_verify(tmp_path: Path) -> None:
    private, public, fp = _key(tmp_path, "publisher")
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    artifact = _artifact(tmp_path)
    sig = sign_artifact(artifact, private)
    assert sig == signature_path(artifact) == tmp_path / "model.onnx.sig"
    document = json.loads(sig.read_text())
    assert document["algorithm"] == "ed25519"
    assert document["digest"] == sha256_file(artifact)
    assert document["signer"] == fp
    keys = TrustedKeys.load([public])
    assert keys.fingerprints == [fp]
    assert keys.verify(sig, sha256_file(artifact)) == fp


def test_key_files_are_not_overwritten(tmp_path: Path) -> None:
    private, public, _ = _key(tmp_path, "k")
    with pytest.raises(InvalidInput, match="already exists"):
        create_signing_key(private, tmp_path / "other.pub")


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    private, public, _ = _key(tmp_path, "k")
    artifact = _artifact(tmp_path)
    sig = sign_artifact(artifact, private)
    artifact.write_bytes(b"model bytes, changed")
    with pytest.raises(ModelLoadError, match="differs from the artifact's") as caught:
        TrustedKeys.load([public]).verify(sig, sha256_file(artifact))
    assert sha256_file(artifact) in str(caught.value)


def test_unknown_signer_is_refused(tmp_path: Path) -> None:
    private, _, fp = _key(tmp_path, "stranger")
    _, trusted_public, trusted_fp = _key(tmp_path, "trusted")
    artifact = _artifact(tmp_path)
    sig = sign_artifact(artifact, private)
    with pytest.raises(ModelLoadError, match=f"unknown key '{fp}'.*{trusted_fp}"):
        TrustedKeys.load([trusted_public]).verify(sig, sha256_file(artifact))
    with pytest.raises(ModelLoadError, match="none configured"):
        TrustedKeys({}).verify(sig, sha256_file(artifact))


def test_forged_signature_is_refused(tmp_path: Path) -> None:
    private, public, fp = _key(tmp_path, "k")
    other_private, _, _ = _key(tmp_path, "other")
    artifact = _artifact(tmp_path)
    sig = sign_artifact(artifact, other_private)
    document = json.loads(sig.read_text())
    document["signer"] = fp  # claims the trusted key, signed with another
    sig.write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="bad signature"):
        TrustedKeys.load([public]).verify(sig, sha256_file(artifact))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"algorithm": "ed25519"}', "digest, signer, signature missing"),
        ("REPLACE_ALGORITHM", "unsupported signature algorithm 'rsa'"),
        ("REPLACE_SIGNATURE", "signature is not base64"),
        ("REPLACE_DIGEST", "digest is not a SHA-256"),
    ],
)
def test_malformed_signature_file(tmp_path: Path, content: str, reason: str) -> None:
    private, public, _ = _key(tmp_path, "k")
    artifact = _artifact(tmp_path)
    sig = sign_artifact(artifact, private)
    if content.startswith("REPLACE_"):
        document = json.loads(sig.read_text())
        field = content.removeprefix("REPLACE_").lower()
        document[field] = {"algorithm": "rsa", "signature": "***", "digest": "abc"}[field]
        content = json.dumps(document)
    sig.write_text(content)
    with pytest.raises(ModelLoadError, match=reason) as caught:
        TrustedKeys.load([public]).verify(sig, sha256_file(artifact))
    assert str(sig) in str(caught.value)


def test_trusted_key_file_must_be_an_ed25519_public_key(tmp_path: Path) -> None:
    private, _, _ = _key(tmp_path, "k")
    with pytest.raises(InvalidConfig, match="k.key"):
        TrustedKeys.load([private])
    with pytest.raises(InvalidConfig, match="cannot read"):
        TrustedKeys.load([tmp_path / "missing.pub"])
