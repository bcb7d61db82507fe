"""The deployment spec the control plane hands ``deploy`` and the runtime settings, validated.

Standard library only: this module is imported by the control plane (``runtime.py``) and by the data-plane
process (``server.py``), which re-validates the configuration file it is started with.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = "falaj-artifact/v1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")


class SpecError(ValueError):
    """The deployment spec or a setting is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """How the data plane runs. Backend settings give the defaults, a deployment's ``settings`` override them."""

    workers: int = 1  # server processes sharing the listening socket (uvicorn workers)
    max_batch_size: int = 32  # rows merged into one session.run
    max_queue_delay_ms: float = 2.0  # how long the oldest queued request may wait for a batch to fill
    adaptive_delay: bool = True  # close a batch before the delay when no other request is on its way in
    intra_op_threads: int = 1  # intra-op threads per session (ONNX Runtime), per process (torch on CPU)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies answer 400
    max_queue_rows: int = 8192  # rows waiting per variant beyond which requests answer 503
    inline_threshold_ms: float = 0.5  # models faster than this at max batch run on the event loop, not a thread
    shadow_max_pending: int = 256  # shadow copies in flight per shadow variant; more are dropped and counted
    ready_timeout_s: float = 120.0  # how long deploy waits for the server to answer ready
    stop_timeout_s: float = 10.0  # how long undeploy waits after SIGTERM before SIGKILL
    exit_with_parent: bool = False  # stop serving when the process that deployed it exits
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime only
    device: str = "auto"  # torch only: auto (CUDA when torch sees it, else CPU), cpu, cuda or cuda:N
    access_log: bool = False
    http: str = "auto"  # uvicorn's HTTP parser: auto (httptools when installed), httptools, h11
    loop: str = "auto"  # event loop: auto (uvloop when installed), uvloop, asyncio

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, base: ServingSettings | None = None) -> ServingSettings:
        """Settings from a mapping on top of ``base``; an unknown key or a bad value raises ``SpecError``."""
        current = base or cls()
        if values is None:
            return current
        if not isinstance(values, Mapping):
            raise SpecError("settings must be an object")
        known = {f.name for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise SpecError(f"unknown setting {key!r} (known: {', '.join(sorted(known))})")
            changes[key] = _setting(key, value)
        return replace(current, **changes)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["providers"] = list(self.providers)
        return out


_POSITIVE_INT = {"workers": 64, "max_batch_size": 1 << 20, "intra_op_threads": 256, "max_queue_rows": 1 << 30}
_NON_NEGATIVE_FLOAT = {"max_queue_delay_ms": 10_000.0, "inline_threshold_ms": 10_000.0}
_CHOICES = {"http": ("auto", "httptools", "h11"), "loop": ("auto", "uvloop", "asyncio")}
_POSITIVE_FLOAT = {"ready_timeout_s": 3600.0, "stop_timeout_s": 600.0}


def _setting(key: str, value: Any) -> Any:
    if key in _POSITIVE_INT or key in ("port", "max_body_bytes", "shadow_max_pending"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"setting {key!r} must be an integer, not {value!r}")
        low = 0 if key in ("port", "shadow_max_pending") else 1
        high = 65535 if key == "port" else _POSITIVE_INT.get(key, 1 << 40)
        if not low <= value <= high:
            raise SpecError(f"setting {key!r} must be between {low} and {high}, not {value}")
        return value
    if key in _NON_NEGATIVE_FLOAT or key in _POSITIVE_FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"setting {key!r} must be a number, not {value!r}")
        limit = _NON_NEGATIVE_FLOAT.get(key) or _POSITIVE_FLOAT[key]
        if not (0 <= value <= limit) or (key in _POSITIVE_FLOAT and value == 0):
            raise SpecError(f"setting {key!r} is out of range: {value}")
        return float(value)
    if key in ("exit_with_parent", "access_log", "adaptive_delay"):
        if not isinstance(value, bool):
            raise SpecError(f"setting {key!r} must be true or false, not {value!r}")
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise SpecError(f"setting {key!r} must be one of {', '.join(_CHOICES[key])}, not {value!r}")
        return value
    if key == "host":
        if not isinstance(value, str) or not value or len(value) > 255:
            raise SpecError(f"setting 'host' must be a host name or address, not {value!r}")
        return value
    if key == "device":
        if not isinstance(value, str) or not _DEVICE.match(value):
            raise SpecError(f"setting 'device' must be auto, cpu, cuda or cuda:<index>, not {value!r}")
        return value
    if key == "providers":
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not value
            or not all(isinstance(p, str) and p for p in value)
        ):
            raise SpecError("setting 'providers' must be a non-empty list of ONNX Runtime execution provider names")
        return tuple(value)
    raise SpecError(f"unknown setting {key!r}")  # pragma: no cover - guarded by from_mapping


class DeviceUnavailable(ValueError):
    """The ``device`` setting names a CUDA device this node does not have; the message says what to do."""


def choose_device(wanted: str, cuda_available: bool, cuda_devices: int) -> tuple[str, str]:
    """The torch device for the ``device`` setting on a node, and why: ``("cuda:0", "auto: CUDA is present")``.

    ``auto`` takes the first CUDA device when there is one, else the CPU; ``cuda`` and ``cuda:N`` are refused
    with ``DeviceUnavailable`` where torch sees no such device, never quietly moved to the CPU.
    """
    if not _DEVICE.match(wanted):
        raise SpecError(f"setting 'device' must be auto, cpu, cuda or cuda:<index>, not {wanted!r}")
    if wanted == "cpu":
        return "cpu", "cpu as configured"
    if wanted == "auto":
        if cuda_available and cuda_devices > 0:
            return "cuda:0", f"auto: torch sees {cuda_devices} CUDA device(s)"
        return "cpu", "auto: torch sees no CUDA device on this node"
    index = int(wanted.partition(":")[2] or 0)
    if not cuda_available or cuda_devices < 1:
        raise DeviceUnavailable(
            f"setting 'device' is {wanted!r} but torch sees no CUDA device on this node "
            "(torch.cuda.is_available() is false); use 'auto' (CUDA where present, else CPU) or 'cpu', "
            "or deploy on a GPU node"
        )
    if index >= cuda_devices:
        raise DeviceUnavailable(
            f"setting 'device' is {wanted!r} but this node has {cuda_devices} CUDA device(s) "
            f"(cuda:0 to cuda:{cuda_devices - 1})"
        )
    return f"cuda:{index}", f"{wanted} as configured"


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """One model version of a deployment: where its verified files are and how much traffic it gets."""

    model: str
    version: int | str
    weight: float
    shadow: bool
    artifact_path: Path
    manifest: Mapping[str, Any]
    signatures: tuple[Mapping[str, Any], ...]
    trusted_keys: Mapping[str, str]
    artifact_digest: str | None = None
    label: str = ""  # the version as the V2 protocol names it; set by DeploymentSpec

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "weight": self.weight,
            "shadow": self.shadow,
            "artifact_path": str(self.artifact_path),
            "manifest": dict(self.manifest),
            "signatures": [dict(s) for s in self.signatures],
            "trusted_keys": dict(self.trusted_keys),
            "artifact_digest": self.artifact_digest,
        }


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """What ``deploy`` receives, checked: every field that is used is named in errors."""

    name: str
    tenant: str
    environment: str
    variants: tuple[VariantSpec, ...]
    sticky_salt: str
    settings: ServingSettings = field(default_factory=ServingSettings)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], defaults: ServingSettings | None = None) -> DeploymentSpec:
        if not isinstance(raw, Mapping):
            raise SpecError("the deployment must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"deployment 'name' must be letters, digits, '.', '_' or '-' (max 128), not {name!r}")
        tenant = raw.get("tenant", "")
        environment = raw.get("environment", "")
        if not isinstance(tenant, str) or not isinstance(environment, str):
            raise SpecError("deployment 'tenant' and 'environment' must be strings")
        items = raw.get("variants")
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise SpecError("deployment 'variants' must be a non-empty list")
        variants = [_variant(i, item) for i, item in enumerate(items)]
        if not any(not v.shadow and v.weight > 0 for v in variants):
            raise SpecError("deployment needs at least one variant that is not a shadow and has a weight above 0")
        labels = _labels(variants)
        variants = [replace(v, label=label) for v, label in zip(variants, labels, strict=True)]
        salt = raw.get("sticky_salt")
        if salt is None:
            salt = hashlib.sha256(f"falaj-sticky:{tenant}:{name}".encode()).hexdigest()
        if not isinstance(salt, str):
            raise SpecError("deployment 'sticky_salt' must be a string")
        settings = ServingSettings.from_mapping(raw.get("settings"), defaults)
        return cls(name, tenant, environment, tuple(variants), salt, settings)

    def variant(self, label: str) -> VariantSpec | None:
        for v in self.variants:
            if v.label == label or f"{v.model}:{v.version}" == label:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "environment": self.environment,
            "variants": [v.to_json() for v in self.variants],
            "sticky_salt": self.sticky_salt,
            "settings": self.settings.to_json(),
        }


def _labels(variants: list[VariantSpec]) -> list[str]:
    """Each variant's V2 version: its version number, or ``model:version`` where two models share one."""
    plain = [str(v.version) for v in variants]
    labels = [p if plain.count(p) == 1 else f"{v.model}:{v.version}" for p, v in zip(plain, variants, strict=True)]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise SpecError(f"deployment lists the same model version twice: {', '.join(dup)}")
    return labels


def _variant(index: int, item: Any) -> VariantSpec:
    where = f"variants[{index}]"
    if not isinstance(item, Mapping):
        raise SpecError(f"{where} must be an object")
    model = item.get("model")
    if not isinstance(model, str) or not model or "/" in model:
        raise SpecError(f"{where}.model must be a model name, not {model!r}")
    version = item.get("version")
    if isinstance(version, bool) or not isinstance(version, int | str) or version in ("", None):
        raise SpecError(f"{where}.version must be a version number, not {version!r}")
    if isinstance(version, str) and (not _NAME.match(version) or ":" in version):
        raise SpecError(f"{where}.version {version!r} is not a usable version name")
    weight = item.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1e9:
        raise SpecError(f"{where}.weight must be a number of at least 0, not {weight!r}")
    shadow = item.get("shadow", False)
    if not isinstance(shadow, bool):
        raise SpecError(f"{where}.shadow must be true or false")
    path = item.get("artifact_path")
    if not isinstance(path, str) or not Path(path).is_absolute():
        raise SpecError(f"{where}.artifact_path must be an absolute folder path, not {path!r}")
    manifest = item.get("manifest")
    _check_manifest(where, manifest)
    assert isinstance(manifest, Mapping)
    signatures = item.get("signatures", [])
    if not isinstance(signatures, Sequence) or isinstance(signatures, str):
        raise SpecError(f"{where}.signatures must be a list")
    for j, sig in enumerate(signatures):
        if (
            not isinstance(sig, Mapping)
            or not isinstance(sig.get("key_id"), str)
            or not isinstance(sig.get("bundle"), Mapping)
        ):
            raise SpecError(f"{where}.signatures[{j}] must be an object with 'key_id' and 'bundle'")
    keys = item.get("trusted_keys", {})
    if not isinstance(keys, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        raise SpecError(f"{where}.trusted_keys must map key ids to PEM public keys")
    digest = item.get("artifact_digest")
    if digest is not None and (not isinstance(digest, str) or not _DIGEST.match(digest)):
        raise SpecError(f"{where}.artifact_digest must be 'sha256:<hex>', not {digest!r}")
    return VariantSpec(
        model=model,
        version=version,
        weight=float(weight),
        shadow=shadow,
        artifact_path=Path(path),
        manifest=manifest,
        signatures=tuple(signatures),
        trusted_keys=dict(keys),
        artifact_digest=digest,
    )


def _check_manifest(where: str, manifest: Any) -> None:
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT:
        raise SpecError(f"{where}.manifest must be a {MANIFEST_FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise SpecError(f"{where}.manifest.files must list the artifact's files")
    for rel, entry in files.items():
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise SpecError(f"{where}.manifest names a file outside the artifact: {rel!r}")
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("digest"), str)
            or not _DIGEST.match(entry["digest"])
            or isinstance(entry.get("size"), bool)
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise SpecError(f"{where}.manifest.files[{rel!r}] must have a 'sha256:<hex>' digest and a size")
