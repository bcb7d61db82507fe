"""Configuration, read from the environment (``FALAJ_*``) with defaults for the embedded set-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Where Falaj keeps its state and how it behaves.

    ``home`` holds the embedded SQLite database, the key files and local artifacts. ``database_url``
    selects the control-plane database (SQLite by default, PostgreSQL in production). ``master_key``
    encrypts private keys at rest; when it is not given, a random one is created once under ``home``
    with owner-only permissions (production should pass it from a secret store instead).
    """

    home: Path
    database_url: str
    policy_dir: Path | None = None
    master_key: str | None = field(default=None, repr=False)
    checkpoint_every: int = 256
    echo_sql: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        home = Path(os.environ.get("FALAJ_HOME", "./.falaj")).expanduser().resolve()
        url = os.environ.get("FALAJ_DATABASE_URL") or f"sqlite:///{home / 'falaj.db'}"
        policy_dir = os.environ.get("FALAJ_POLICY_DIR")
        values: dict[str, object] = {
            "home": home,
            "database_url": url,
            "policy_dir": Path(policy_dir).resolve() if policy_dir else None,
            "master_key": os.environ.get("FALAJ_MASTER_KEY") or None,
            "checkpoint_every": _env_int("FALAJ_CHECKPOINT_EVERY", 256),
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.checkpoint_every < 1:
            raise ValueError("FALAJ_CHECKPOINT_EVERY must be at least 1")
        return settings

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def data_dir(self) -> Path:
        """Local dataset files live under ``data/<tenant>/``; the control plane reads nothing else."""
        return self.home / "data"

    @property
    def uploads_dir(self) -> Path:
        """Staging for streamed uploads (``uploads/<tenant>/<id>.part``), moved into a store by an action."""
        return self.home / "uploads"

    @property
    def exports_dir(self) -> Path:
        """Exports (audit log, model versions) are written under ``exports/<tenant>/``."""
        return self.home / "exports"
