"""API tokens: ``flj_<prefix>_<secret>``; random, shown once, stored as a SHA-256 digest of the secret.

The secret has 256 bits of entropy, so a fast hash is enough (nothing to brute-force); the prefix is a
public lookup key, so verification is one indexed read and a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NewToken:
    prefix: str
    secret_hash: str
    token: str  # shown once


def new_token() -> NewToken:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(prefix=prefix, secret_hash=hash_secret(secret), token=f"flj_{prefix}_{secret}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "flj" or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
