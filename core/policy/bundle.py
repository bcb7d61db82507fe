"""Loading the policy bundle from ``policies/`` and computing its digest."""

from __future__ import annotations

import csv
import hashlib
import io
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from falaj.core.errors import FalajError

MODEL_FILE = "rbac_model.conf"
POLICY_FILE = "rbac_policy.csv"
MANIFEST_FILE = "bundle.toml"
EFFECTS = ("allow", "deny")


class PolicyError(FalajError):
    """A policy file is malformed; names the file, the line and the problem. The bundle in force stays."""

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class RbacRule:
    role: str
    tenant: str
    resource: str
    verb: str
    effect: str
    line: int

    @property
    def text(self) -> str:
        line = ", ".join(("p", self.role, self.tenant, self.resource, self.verb, self.effect))
        return f"{POLICY_FILE}:{self.line}: {line}"


@dataclass(frozen=True)
class PolicyBundle:
    """An immutable, parsed policy bundle and its digest (``sha256:`` over every file, by path)."""

    source: str
    digest: str
    files: dict[str, bytes] = field(repr=False)
    manifest: dict[str, Any]
    model_text: str
    rules: tuple[RbacRule, ...]

    @property
    def known_roles(self) -> frozenset[str]:
        return frozenset(self.manifest.get("roles", {}).get("known", []))

    @property
    def known_rulesets(self) -> frozenset[str]:
        return frozenset(self.manifest.get("rulesets", {}).get("known", []))

    @property
    def version(self) -> str:
        return str(self.manifest.get("bundle", {}).get("version", "?"))


def default_policy_dir() -> Path:
    return Path(str(resources.files("falaj.policies")))


def bundle_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).digest())
    return "sha256:" + h.hexdigest()


def read_files(folder: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".conf", ".csv", ".toml"} and "__pycache__" not in path.parts:
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def load_bundle(folder: Path | None = None) -> PolicyBundle:
    """Read and validate the bundle in ``folder`` (default: the bundle shipped with Falaj)."""
    folder = folder or default_policy_dir()
    if not folder.is_dir():
        raise PolicyError(str(folder), None, "policy folder does not exist")
    files = read_files(folder)
    for required in (MODEL_FILE, POLICY_FILE, MANIFEST_FILE):
        if required not in files:
            raise PolicyError(required, None, f"missing from the policy bundle in {folder}")
    try:
        manifest = tomllib.loads(_text(files, MANIFEST_FILE))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(MANIFEST_FILE, getattr(exc, "lineno", None), str(exc)) from exc
    known_roles = manifest.get("roles", {}).get("known")
    if not isinstance(known_roles, list) or not all(isinstance(r, str) for r in known_roles):
        raise PolicyError(MANIFEST_FILE, None, "[roles] known must be a list of role names")
    model_text = _text(files, MODEL_FILE)
    _check_model(model_text)
    rules = tuple(_parse_rules(_text(files, POLICY_FILE), frozenset(known_roles)))
    return PolicyBundle(
        source=str(folder),
        digest=bundle_digest(files),
        files=files,
        manifest=manifest,
        model_text=model_text,
        rules=rules,
    )


def _text(files: dict[str, bytes], name: str) -> str:
    try:
        return files[name].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(name, None, f"not UTF-8 text ({exc})") from exc


def _check_model(text: str) -> None:
    sections = {line.strip() for line in text.splitlines() if line.strip().startswith("[")}
    for needed in ("[request_definition]", "[policy_definition]", "[policy_effect]", "[matchers]"):
        if needed not in sections:
            raise PolicyError(MODEL_FILE, None, f"section {needed} is missing")
    try:
        import casbin

        model = casbin.Model()
        model.load_model_from_text(text)
    except Exception as exc:
        raise PolicyError(MODEL_FILE, None, f"casbin cannot read the model: {exc}") from exc


def _parse_rules(text: str, known_roles: frozenset[str]) -> list[RbacRule]:
    rules: list[RbacRule] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader(io.StringIO(line)))]
        if fields[0] != "p":
            raise PolicyError(POLICY_FILE, lineno, f"expected a 'p' line, got {fields[0]!r}")
        if len(fields) != 6:
            raise PolicyError(
                POLICY_FILE,
                lineno,
                f"expected 6 fields (p, role, tenant, resource, verb, effect), got {len(fields)}",
            )
        _, role, tenant, resource, verb, effect = fields
        if role not in known_roles:
            raise PolicyError(
                POLICY_FILE, lineno, f"unknown role {role!r}: add it to bundle.toml [roles] known"
            )
        if effect not in EFFECTS:
            raise PolicyError(POLICY_FILE, lineno, f"effect must be allow or deny, got {effect!r}")
        if not resource or not verb or not tenant:
            raise PolicyError(POLICY_FILE, lineno, "tenant, resource and verb must not be empty")
        rules.append(RbacRule(role, tenant, resource, verb, effect, lineno))
    return rules
