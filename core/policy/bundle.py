"""Loading the policy bundle from ``policies/``: parsing, validation with file and line, and its digest."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from falaj.core.errors import FalajError

MODEL_FILE = "rbac_model.conf"
POLICY_FILE = "rbac_policy.csv"
MANIFEST_FILE = "bundle.toml"
REGIONS_FILE = "regions.toml"
RESIDENCY_FILE = "residency.toml"
CONSENT_FILE = "consent.toml"
APPROVALS_FILE = "approvals.toml"
SIGNERS_FILE = "signers.toml"
REQUIRED = (
    MODEL_FILE,
    POLICY_FILE,
    MANIFEST_FILE,
    REGIONS_FILE,
    RESIDENCY_FILE,
    CONSENT_FILE,
    APPROVALS_FILE,
    SIGNERS_FILE,
)
EFFECTS = ("allow", "deny")
CLASS_RULES = ("free", "transfer-basis", "exception")
COUNTRY = re.compile(r"^[A-Z]{2}$")


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
class Region:
    id: str
    provider: str
    name: str
    country: str


@dataclass(frozen=True)
class Ruleset:
    name: str
    description: str
    bases: frozenset[str]
    adequate_countries: frozenset[str]


@dataclass(frozen=True)
class ApprovalRule:
    environment: str
    quorum: int
    approver_role: str = "approver"
    rejections_to_end: int = 1
    expires_hours: int = 72


@dataclass(frozen=True)
class SignerPolicy:
    trust: str  # registered | listed
    require_signature: bool
    keys: frozenset[str] = frozenset()
    # Sigstore keyless signers trusted by identity: (identity, OIDC issuer). Needs network access.
    keyless: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class PolicyBundle:
    """An immutable, parsed policy bundle and its digest (``sha256:`` over every file, by path)."""

    source: str
    digest: str
    files: dict[str, bytes] = field(repr=False)
    manifest: dict[str, Any]
    model_text: str
    rules: tuple[RbacRule, ...]
    regions: dict[str, Region] = field(default_factory=dict)
    classifications: tuple[str, ...] = ()
    class_rules: dict[str, str] = field(default_factory=dict)
    rulesets: dict[str, Ruleset] = field(default_factory=dict)
    purposes: dict[str, str] = field(default_factory=dict)
    legal_bases: dict[str, str] = field(default_factory=dict)
    approvals: dict[str, ApprovalRule] = field(default_factory=dict)
    tenant_approvals: dict[str, dict[str, ApprovalRule]] = field(default_factory=dict)
    signers: SignerPolicy = SignerPolicy("registered", True)
    tenant_signers: dict[str, SignerPolicy] = field(default_factory=dict)

    @property
    def known_roles(self) -> frozenset[str]:
        return frozenset(self.manifest.get("roles", {}).get("known", []))

    @property
    def known_rulesets(self) -> frozenset[str]:
        return frozenset(self.rulesets) or frozenset(self.manifest.get("rulesets", {}).get("known", []))

    @property
    def version(self) -> str:
        return str(self.manifest.get("bundle", {}).get("version", "?"))

    def approval_rule(self, tenant: str, environment: str) -> ApprovalRule | None:
        return self.tenant_approvals.get(tenant, {}).get(environment) or self.approvals.get(environment)

    def signer_policy(self, tenant: str) -> SignerPolicy:
        return self.tenant_signers.get(tenant, self.signers)

    def strictness(self, classification: str) -> int:
        return self.classifications.index(classification)


def default_policy_dir() -> Path:
    return Path(str(resources.files("falaj.policies")))


def bundle_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).digest())
    return "sha256:" + h.hexdigest()


def read_files(folder: Path) -> dict[str, bytes]:
    """The bundle's files: top-level policy files only (policy test cases live in ``tests/``)."""
    files: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in {".conf", ".csv", ".toml"}:
            files[path.name] = path.read_bytes()
    return files


def load_bundle(folder: Path | None = None) -> PolicyBundle:
    """Read and validate the bundle in ``folder`` (default: the bundle shipped with Falaj)."""
    folder = folder or default_policy_dir()
    if not folder.is_dir():
        raise PolicyError(str(folder), None, "policy folder does not exist")
    return parse_bundle(read_files(folder), str(folder))


def parse_bundle(files: dict[str, bytes], source: str) -> PolicyBundle:
    """Parse and validate bundle files (from a folder, or as stored in the database)."""
    for required in REQUIRED:
        if required not in files:
            raise PolicyError(required, None, f"missing from the policy bundle in {source}")
    texts = {name: _text(files, name) for name in files}
    manifest = _toml(texts, MANIFEST_FILE)
    known_roles = manifest.get("roles", {}).get("known")
    if not isinstance(known_roles, list) or not all(isinstance(r, str) for r in known_roles):
        raise PolicyError(MANIFEST_FILE, _line_of(texts[MANIFEST_FILE], "known"), "[roles] known must be a list")
    model_text = texts[MODEL_FILE]
    _check_model(model_text)
    rules = tuple(_parse_rules(texts[POLICY_FILE], frozenset(known_roles)))

    regions = _parse_regions(texts[REGIONS_FILE], _toml(texts, REGIONS_FILE))
    classifications, class_rules, rulesets = _parse_residency(texts[RESIDENCY_FILE], _toml(texts, RESIDENCY_FILE))
    purposes, legal_bases = _parse_consent(texts[CONSENT_FILE], _toml(texts, CONSENT_FILE))
    approvals, tenant_approvals = _parse_approvals(
        texts[APPROVALS_FILE], _toml(texts, APPROVALS_FILE), frozenset(known_roles)
    )
    signers, tenant_signers = _parse_signers(texts[SIGNERS_FILE], _toml(texts, SIGNERS_FILE))
    return PolicyBundle(
        source=source,
        digest=bundle_digest(files),
        files=files,
        manifest=manifest,
        model_text=model_text,
        rules=rules,
        regions=regions,
        classifications=classifications,
        class_rules=class_rules,
        rulesets=rulesets,
        purposes=purposes,
        legal_bases=legal_bases,
        approvals=approvals,
        tenant_approvals=tenant_approvals,
        signers=signers,
        tenant_signers=tenant_signers,
    )


def _text(files: dict[str, bytes], name: str) -> str:
    try:
        return files[name].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(name, None, f"not UTF-8 text ({exc})") from exc


def _toml(texts: dict[str, str], name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(texts[name])
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise PolicyError(name, int(match.group(1)) if match else None, f"not valid TOML: {exc}") from exc


def _line_of(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line and not line.lstrip().startswith("#"):
            return number
    return None


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
    seen: dict[tuple[str, str, str, str], int] = {}
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
            raise PolicyError(POLICY_FILE, lineno, f"unknown role {role!r}: add it to bundle.toml [roles] known")
        if effect not in EFFECTS:
            raise PolicyError(POLICY_FILE, lineno, f"effect must be allow or deny, got {effect!r}")
        if not resource or not verb or not tenant:
            raise PolicyError(POLICY_FILE, lineno, "tenant, resource and verb must not be empty")
        key = (role, tenant, resource, verb)
        if key in seen:
            raise PolicyError(POLICY_FILE, lineno, f"repeats the rule of line {seen[key]}")
        seen[key] = lineno
        rules.append(RbacRule(role, tenant, resource, verb, effect, lineno))
    return rules


def _parse_regions(text: str, data: dict[str, Any]) -> dict[str, Region]:
    regions: dict[str, Region] = {}
    table = data.get("regions")
    if not isinstance(table, dict) or not table:
        raise PolicyError(REGIONS_FILE, None, "needs at least one [regions.<id>] table")
    for rid, entry in table.items():
        line = _line_of(text, f"[regions.{rid}]") or _line_of(text, f'[regions."{rid}"]')
        if not isinstance(entry, dict):
            raise PolicyError(REGIONS_FILE, line, f"region {rid!r} must be a table")
        country = entry.get("country")
        if not isinstance(country, str) or not COUNTRY.match(country):
            raise PolicyError(REGIONS_FILE, line, f"region {rid!r}: country must be an ISO 3166 code like 'AE'")
        regions[rid] = Region(rid, str(entry.get("provider", "")), str(entry.get("name", rid)), country)
    return regions


def _parse_residency(text: str, data: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, str], dict[str, Ruleset]]:
    classes = data.get("classifications", {})
    order = classes.get("order")
    if not isinstance(order, list) or not order or not all(isinstance(c, str) for c in order):
        raise PolicyError(RESIDENCY_FILE, _line_of(text, "order"), "[classifications] order must list classes")
    rules = classes.get("rules", {})
    for name in order:
        if rules.get(name) not in CLASS_RULES:
            raise PolicyError(
                RESIDENCY_FILE,
                _line_of(text, f"{name} =") or _line_of(text, "[classifications.rules]"),
                f"classification {name!r} needs a rule, one of {list(CLASS_RULES)}",
            )
    extra = sorted(set(rules) - set(order))
    if extra:
        raise PolicyError(RESIDENCY_FILE, _line_of(text, f"{extra[0]} ="), f"unknown classification {extra[0]!r}")
    rulesets: dict[str, Ruleset] = {}
    for name, entry in data.get("rulesets", {}).items():
        line = _line_of(text, f"[rulesets.{name}]")
        bases = entry.get("bases", [])
        countries = entry.get("adequate_countries", [])
        unknown = [b for b in bases if b not in ("adequacy", "contract", "express-consent")]
        if unknown:
            raise PolicyError(RESIDENCY_FILE, line, f"ruleset {name!r}: unknown transfer basis {unknown[0]!r}")
        bad = [c for c in countries if not isinstance(c, str) or not COUNTRY.match(c)]
        if bad:
            raise PolicyError(RESIDENCY_FILE, line, f"ruleset {name!r}: {bad[0]!r} is not an ISO 3166 country code")
        rulesets[name] = Ruleset(name, str(entry.get("description", "")), frozenset(bases), frozenset(countries))
    if not rulesets:
        raise PolicyError(RESIDENCY_FILE, None, "needs at least one [rulesets.<name>] table")
    return tuple(order), dict(rules), rulesets


def _parse_consent(text: str, data: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    purposes = data.get("purposes")
    if not isinstance(purposes, dict) or not purposes:
        raise PolicyError(CONSENT_FILE, None, "needs a [purposes] table")
    bases = data.get("legal_bases", {})
    for name, mode in bases.items():
        if mode not in ("filter", "no-filter"):
            raise PolicyError(
                CONSENT_FILE,
                _line_of(text, f"{name} ="),
                f"legal basis {name!r} must be 'filter' or 'no-filter', got {mode!r}",
            )
    return {k: str(v) for k, v in purposes.items()}, dict(bases)


def _approval_rule(env: str, entry: Any, text: str, known_roles: frozenset[str]) -> ApprovalRule:
    line = _line_of(text, f"environments.{env}]")
    if not isinstance(entry, dict):
        raise PolicyError(APPROVALS_FILE, line, f"environment {env!r} must be a table")
    quorum = entry.get("quorum")
    if not isinstance(quorum, int) or quorum < 0:
        raise PolicyError(APPROVALS_FILE, line, f"environment {env!r}: quorum must be a whole number >= 0")
    role = entry.get("approver_role", "approver")
    if role not in known_roles:
        raise PolicyError(APPROVALS_FILE, line, f"environment {env!r}: unknown approver role {role!r}")
    rejections = entry.get("rejections_to_end", 1)
    hours = entry.get("expires_hours", 72)
    if not isinstance(rejections, int) or rejections < 1 or not isinstance(hours, int) or hours < 1:
        raise PolicyError(
            APPROVALS_FILE, line, f"environment {env!r}: rejections_to_end and expires_hours must be >= 1"
        )
    return ApprovalRule(env, quorum, role, rejections, hours)


def _parse_approvals(
    text: str, data: dict[str, Any], known_roles: frozenset[str]
) -> tuple[dict[str, ApprovalRule], dict[str, dict[str, ApprovalRule]]]:
    envs = {env: _approval_rule(env, entry, text, known_roles) for env, entry in data.get("environments", {}).items()}
    if not envs:
        raise PolicyError(APPROVALS_FILE, None, "needs at least one [environments.<name>] table")
    tenants = {
        tenant: {env: _approval_rule(env, e, text, known_roles) for env, e in entry.get("environments", {}).items()}
        for tenant, entry in data.get("tenants", {}).items()
    }
    return envs, tenants


def _signer_policy(entry: dict[str, Any], default: SignerPolicy | None, text: str, where: str) -> SignerPolicy:
    trust = entry.get("trust", default.trust if default else "registered")
    if trust not in ("registered", "listed"):
        raise PolicyError(SIGNERS_FILE, _line_of(text, "trust"), f"{where}: trust must be 'registered' or 'listed'")
    require = entry.get("require_signature", default.require_signature if default else True)
    if not isinstance(require, bool):
        raise PolicyError(
            SIGNERS_FILE, _line_of(text, "require_signature"), f"{where}: require_signature is true/false"
        )
    keys = entry.get("keys", [])
    if trust == "listed" and not keys:
        raise PolicyError(SIGNERS_FILE, _line_of(text, where), f"{where}: trust = 'listed' needs keys = [...]")
    keyless = entry.get("keyless", [])
    identities = set()
    for item in keyless if isinstance(keyless, list) else [None]:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("identity"), str)
            or not str(item.get("issuer", "")).startswith("https://")
        ):
            raise PolicyError(
                SIGNERS_FILE,
                _line_of(text, "keyless"),
                f"{where}: keyless entries need identity = '...' and issuer = 'https://...'",
            )
        identities.add((item["identity"], item["issuer"]))
    return SignerPolicy(
        trust, require, frozenset(keys), frozenset(identities) or (default.keyless if default else frozenset())
    )


def _parse_signers(text: str, data: dict[str, Any]) -> tuple[SignerPolicy, dict[str, SignerPolicy]]:
    default = _signer_policy(data.get("default", {}), None, text, "[default]")
    tenants = {t: _signer_policy(e, default, text, f"[tenants.{t}]") for t, e in data.get("tenants", {}).items()}
    return default, tenants
