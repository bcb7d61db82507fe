"""Signing and verifying model artifacts with model-signing (sigstore bundle v0.3, in-toto statement).

Offline ECDSA keys by default. A Falaj-held key is PKCS#8-encrypted with the master key and is decrypted
only inside model-signing's loader (it is handed the encrypted file and the password), never written in
the clear. model-signing is imported lazily: it is only needed when signing or verifying.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from falaj.core.errors import ValidationError

KEY_PREFIX = "ecdsa:"


def canonical_public_pem(public_pem: bytes) -> bytes:
    """The PEM as ``cryptography`` writes it (SubjectPublicKeyInfo), whatever whitespace it came with."""
    check_public_key(public_pem)
    key = serialization.load_pem_public_key(public_pem)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_pem: bytes) -> str:
    """The id of a public key: ``ecdsa:`` + SHA-256 of its canonical PEM, as model-signing's bundle hint."""
    return KEY_PREFIX + hashlib.sha256(canonical_public_pem(public_pem)).hexdigest()


def generate_key(password: bytes) -> tuple[bytes, bytes]:
    """A new P-256 key pair: (encrypted PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def check_public_key(public_pem: bytes) -> None:
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError as exc:
        raise ValidationError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise ValidationError("signing keys must be ECDSA on P-256, P-384 or P-521 (what model-signing accepts)")


def _private_file(folder: Path, pem: bytes) -> Path:
    path = folder / "signing-key.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def sign_folder(folder: Path, private_pem: bytes, password: bytes | None) -> dict[str, Any]:
    """Sign every file of ``folder``; returns the bundle (JSON object)."""
    import model_signing

    with tempfile.TemporaryDirectory() as tmp:
        key_path = _private_file(Path(tmp), private_pem)
        bundle_path = Path(tmp) / "model.sig"
        # model-signing 1.1.1 annotates password as str but needs bytes (a str raises TypeError).
        config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_signer(private_key=key_path, password=password)  # type: ignore[arg-type]
        config.sign(folder, bundle_path)
        bundle: dict[str, Any] = json.loads(bundle_path.read_text("utf-8"))
        return bundle


def statement(bundle: dict[str, Any]) -> dict[str, Any]:
    """The in-toto statement inside a bundle (unverified)."""
    try:
        payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])
        result: dict[str, Any] = json.loads(payload)
        return result
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"not a model-signing bundle: {exc}") from exc


def bundle_key_id(bundle: dict[str, Any]) -> str | None:
    hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    return KEY_PREFIX + hint if isinstance(hint, str) else None


def verify_against_manifest(bundle: dict[str, Any], public_pem: bytes, manifest: dict[str, Any]) -> str | None:
    """Check the bundle's signature with ``public_pem`` and its file digests against an artifact manifest.

    Returns None when it verifies, else the reason. Equivalent to model-signing's folder verification
    (same signature check, same per-file SHA-256 digests), without copying the files out of the store.
    """
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    with tempfile.TemporaryDirectory() as tmp:
        pub = Path(tmp) / "key.pub"
        pub.write_bytes(public_pem)
        sig = Path(tmp) / "model.sig"
        sig.write_text(json.dumps(bundle), "utf-8")
        try:
            signed = sign_ec_key.Verifier(pub).verify(sign_sigstore_pb.Signature.read(sig))
        except Exception as exc:  # model-signing raises ValueError, InvalidSignature, KeyError, ...
            return f"signature does not verify: {type(exc).__name__}: {exc}".strip()
    signed_files = {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}
    stored = {name: entry["digest"].removeprefix("sha256:") for name, entry in manifest["files"].items()}
    if signed_files != stored:
        missing = sorted(set(stored) - set(signed_files))
        extra = sorted(set(signed_files) - set(stored))
        changed = sorted(n for n in set(stored) & set(signed_files) if stored[n] != signed_files[n])
        return f"signed files differ from the artifact: missing {missing}, extra {extra}, changed {changed}"
    return None


def verify_folder(folder: Path, bundle_path: Path, public_key_path: Path) -> None:
    """model-signing's own folder verification (what `model_signing verify key` runs). Raises on failure."""
    import model_signing

    config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    config.use_elliptic_key_verifier(public_key=public_key_path).verify(folder, bundle_path)


SIGSTORE = "sigstore"


def sign_folder_keyless(folder: Path, identity_token: str) -> dict[str, Any]:
    """Sign with Sigstore keyless (Fulcio certificate for the token's identity, logged in Rekor).

    Needs network access to Sigstore's public good instance; raises ``SigstoreUnavailable`` otherwise.
    """
    import model_signing

    with tempfile.TemporaryDirectory() as tmp:
        bundle_path = Path(tmp) / "model.sig"
        try:
            config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
            config.use_sigstore_signer(identity_token=identity_token).sign(folder, bundle_path)
        except Exception as exc:
            raise SigstoreUnavailable(
                f"Sigstore keyless signing failed (it needs network access to Sigstore's "
                f"Fulcio and Rekor): {type(exc).__name__}: {exc}"
            ) from exc
        result: dict[str, Any] = json.loads(bundle_path.read_text("utf-8"))
        return result


def verify_folder_keyless(folder: Path, bundle: dict[str, Any], identity: str, issuer: str) -> str | None:
    """model-signing's Sigstore verification for a trusted identity; None if it verifies."""
    import model_signing

    with tempfile.TemporaryDirectory() as tmp:
        bundle_path = Path(tmp) / "model.sig"
        bundle_path.write_text(json.dumps(bundle), "utf-8")
        try:
            config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
            config.use_sigstore_verifier(identity=identity, oidc_issuer=issuer).verify(folder, bundle_path)
        except Exception as exc:
            return f"Sigstore verification failed: {type(exc).__name__}: {exc}"
    return None


class SigstoreUnavailable(ValidationError):
    """Keyless signing or verification could not reach Sigstore."""
