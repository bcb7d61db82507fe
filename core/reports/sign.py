"""Detached Ed25519 signatures over a rendered report, so an auditor can tell it was not edited.

The signature covers ``falaj-report/v1\\n`` followed by the SHA-256 hex digest of the exact bytes of the file
(JSON, zip or PDF); checking it needs only the installation's audit public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from falaj.core.audit.verifier import key_id_of

if TYPE_CHECKING:
    from falaj.core.keys import AuditSigner

SIGNATURE_FORMAT = "falaj-report-signature/v1"
ALGORITHM = "Ed25519"
DOMAIN = b"falaj-report/v1\n"


def signed_message(sha256_hex: str) -> bytes:
    """What the signature covers: a domain prefix and the digest, so it cannot be replayed as anything else."""
    return DOMAIN + sha256_hex.encode("ascii")


def sign_report(data: bytes, signer: AuditSigner) -> dict[str, str]:
    """A detached signature document for ``data`` (the bytes of a rendered report)."""
    digest = hashlib.sha256(data).hexdigest()
    signature = signer.sign(signed_message(digest))
    return {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key_id": signer.key_id,
        "sha256": digest,
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def verify_report(data: bytes, signature_doc: dict[str, Any], public_key_pem: bytes) -> None:
    """Check ``data`` against its signature document with the public key you trust; ValueError if not."""
    if not isinstance(signature_doc, dict):
        raise ValueError("the signature document is not a JSON object")
    fmt = signature_doc.get("format")
    if fmt != SIGNATURE_FORMAT:
        raise ValueError(f"unknown signature format {fmt!r}: expected {SIGNATURE_FORMAT!r}")
    if signature_doc.get("algorithm") != ALGORITHM:
        raise ValueError(f"unsupported algorithm {signature_doc.get('algorithm')!r}: expected {ALGORITHM!r}")
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the public key could not be read: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    key_id = key_id_of(key)
    if signature_doc.get("key_id") != key_id:
        raise ValueError(
            f"the report was signed by key {signature_doc.get('key_id')!r}, not by the trusted key {key_id}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if signature_doc.get("sha256") != digest:
        raise ValueError(
            f"the file's SHA-256 is {digest} but the signature document names {signature_doc.get('sha256')!r}: "
            "the file was changed after signing"
        )
    try:
        signature = base64.b64decode(str(signature_doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the signature is not valid base64") from exc
    try:
        key.verify(signature, signed_message(digest))
    except InvalidSignature as exc:
        raise ValueError("the signature does not verify: the signature document was forged or altered") from exc
