"""The training spec and the backend settings: validated before anything starts (standard library only).

``submit`` validates the spec and refuses a bad one with a ``ValueError`` that names the field and what is
allowed; the worker validates it again from ``job.json`` with the same code, so both read it the same way.

Spec fields (unknown fields are refused):

==================== ===================================================================================
``trainer``          ``tabular_classifier`` or ``tabular_regressor`` (the builtin torch MLP); or instead
``entry_point``      ``"module:function"``, a user function (see ``falaj.plugins.local_compute``)
``target``           the target column (required by the builtin trainers)
``features``         feature columns, in order; default: every numeric column but the target and
                     ``subject_column``
``subject_column``   the data subject id column, never a feature
``hidden``           hidden layer sizes, default ``[32]`` (``[]`` is a linear model)
``epochs``           1 to 1000, default 20
``batch_size``       1 to 65536, default 64
``lr``               Adam's learning rate, above 0 and at most 1, default 0.01
``seed``             0 to 2**32 - 1, default 0: the same seed, data and threads give the same model
``validation_fraction``  0 to 0.9, default 0.2 (rows held out for the metrics)
``threads``          CPU threads for torch and BLAS, 1 to the backend's ``max_threads``, default 1
``time_limit_s``     seconds the trainer may run (from its start) before it is killed and the job
                     fails, above 0 and at most ``max_time_limit_s``, default 600
``device``           ``auto`` (CUDA when torch sees one, else CPU), ``cpu`` or ``cuda`` (the job fails if
                     torch sees no CUDA device), default ``auto``
``params``           a JSON object handed to an ``entry_point`` as ``spec["params"]`` (entry points only)
==================== ===================================================================================

Backend settings (``backend.register ... "settings": {...}``; unknown settings are refused):
``python_path`` (absolute folders put first on the worker's ``sys.path``, where entry-point modules are
found), ``max_time_limit_s`` (default 86400) and ``max_threads`` (default: the machine's CPU count).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

TRAINERS = ("tabular_classifier", "tabular_regressor")
DEVICES = ("auto", "cpu", "cuda")
FIELDS = (
    "trainer",
    "entry_point",
    "target",
    "features",
    "subject_column",
    "hidden",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "validation_fraction",
    "threads",
    "time_limit_s",
    "device",
    "params",
)
SETTINGS = ("python_path", "max_time_limit_s", "max_threads")
MAX_EPOCHS = 1000
MAX_BATCH = 65536
MAX_LAYERS = 16
MAX_WIDTH = 4096
MAX_SEED = 2**32 - 1
DEFAULT_TIME_LIMIT_S = 600.0
_ENTRY_POINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class LocalComputeSettings:
    """The backend's settings, as an admin configured them."""

    python_path: tuple[str, ...] = ()
    max_time_limit_s: float = 86400.0
    max_threads: int = field(default_factory=cpu_count)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> LocalComputeSettings:
        unknown = sorted(set(raw) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"unknown setting {unknown[0]!r} for the local compute backend; allowed: {', '.join(SETTINGS)}"
            )
        paths = raw.get("python_path", [])
        if isinstance(paths, str) or not isinstance(paths, Sequence):
            raise ValueError("setting 'python_path' must be a list of absolute folder paths")
        for p in paths:
            if not isinstance(p, str) or not Path(p).is_absolute():
                raise ValueError(f"setting 'python_path': {p!r} is not an absolute folder path")
        limit = raw.get("max_time_limit_s", 86400.0)
        if not _is_number(limit) or not 0 < float(limit) <= 30 * 86400:
            raise ValueError("setting 'max_time_limit_s' must be a number of seconds above 0 and at most 30 days")
        threads = raw.get("max_threads", cpu_count())
        if not _is_int(threads) or not 1 <= threads <= cpu_count():
            raise ValueError(f"setting 'max_threads' must be an integer from 1 to {cpu_count()} (this machine's CPUs)")
        return cls(python_path=tuple(paths), max_time_limit_s=float(limit), max_threads=int(threads))

    def as_dict(self) -> dict[str, Any]:
        return {
            "python_path": list(self.python_path),
            "max_time_limit_s": self.max_time_limit_s,
            "max_threads": self.max_threads,
        }


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    """A validated spec with every default filled in."""

    trainer: str | None
    entry_point: str | None
    target: str | None
    features: tuple[str, ...] | None
    subject_column: str | None
    hidden: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    seed: int
    validation_fraction: float
    threads: int
    time_limit_s: float
    device: str
    params: Mapping[str, Any]

    @property
    def task(self) -> str:
        """``classification``, ``regression`` or ``custom`` (an entry point)."""
        if self.trainer == "tabular_classifier":
            return "classification"
        if self.trainer == "tabular_regressor":
            return "regression"
        return "custom"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features) if self.features is not None else None
        data["hidden"] = list(self.hidden)
        data["params"] = dict(self.params)
        return data


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _int(spec: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = spec.get(name, default)
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"spec field {name!r}: {value!r} is not allowed; give an integer from {low} to {high}")
    return int(value)


def _column(spec: Mapping[str, Any], name: str) -> str | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValueError(f"spec field {name!r}: {value!r} is not allowed; give a column name (1 to 200 characters)")
    return value


def validate_spec(raw: object, settings: LocalComputeSettings | None = None) -> TrainingSpec:
    """Check a spec and fill in its defaults; raise ``ValueError`` naming the field and what is allowed."""
    settings = settings or LocalComputeSettings()
    if not isinstance(raw, Mapping):
        raise ValueError(f"the spec must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ValueError(f"spec field {unknown[0]!r} is unknown; allowed fields: {', '.join(FIELDS)}")
    spec: Mapping[str, Any] = raw

    trainer, entry_point = spec.get("trainer"), spec.get("entry_point")
    if trainer is not None and entry_point is not None:
        raise ValueError("spec fields 'trainer' and 'entry_point' exclude each other: give one")
    if trainer is None and entry_point is None:
        raise ValueError(f"spec field 'trainer' is missing: give one of {', '.join(TRAINERS)}, or 'entry_point'")
    if trainer is not None and trainer not in TRAINERS:
        raise ValueError(
            f"spec field 'trainer': {trainer!r} is not a builtin trainer; allowed: {', '.join(TRAINERS)} "
            "(or give 'entry_point': 'module:function')"
        )
    if entry_point is not None and (not isinstance(entry_point, str) or not _ENTRY_POINT.match(entry_point)):
        raise ValueError(f"spec field 'entry_point': {entry_point!r} is not allowed; give 'package.module:function'")

    target = _column(spec, "target")
    if trainer is not None and target is None:
        raise ValueError(f"spec field 'target' is missing: trainer {trainer!r} needs the name of the target column")
    subject = _column(spec, "subject_column")
    if subject is not None and subject == target:
        raise ValueError("spec field 'subject_column' must differ from 'target'")

    features = spec.get("features")
    if features is not None:
        if (
            isinstance(features, str)
            or not isinstance(features, Sequence)
            or not 1 <= len(features) <= 10000
            or not all(isinstance(f, str) and 0 < len(f) <= 200 for f in features)
        ):
            raise ValueError("spec field 'features': give a list of 1 to 10000 column names")
        if len(set(features)) != len(features):
            raise ValueError("spec field 'features' names a column twice")
        for excluded in (target, subject):
            if excluded is not None and excluded in features:
                raise ValueError(f"spec field 'features' must not hold {excluded!r} (the target or subject column)")

    hidden = spec.get("hidden", [32])
    if (
        isinstance(hidden, str)
        or not isinstance(hidden, Sequence)
        or len(hidden) > MAX_LAYERS
        or not all(_is_int(h) and 1 <= h <= MAX_WIDTH for h in hidden)
    ):
        raise ValueError(
            f"spec field 'hidden': {hidden!r} is not allowed; give a list of at most {MAX_LAYERS} layer sizes "
            f"from 1 to {MAX_WIDTH}"
        )

    lr = spec.get("lr", 0.01)
    if not _is_number(lr) or not 0 < lr <= 1:
        raise ValueError(f"spec field 'lr': {lr!r} is not allowed; give a number above 0 and at most 1")
    fraction = spec.get("validation_fraction", 0.2)
    if not _is_number(fraction) or not 0 <= fraction <= 0.9:
        raise ValueError(f"spec field 'validation_fraction': {fraction!r} is not allowed; give a number from 0 to 0.9")
    limit = spec.get("time_limit_s", min(DEFAULT_TIME_LIMIT_S, settings.max_time_limit_s))
    if not _is_number(limit) or not 0 < limit <= settings.max_time_limit_s:
        raise ValueError(
            f"spec field 'time_limit_s': {limit!r} is not allowed; give seconds above 0 and at most "
            f"{settings.max_time_limit_s:g} (this backend's max_time_limit_s)"
        )
    device = spec.get("device", "auto")
    if device not in DEVICES:
        raise ValueError(f"spec field 'device': {device!r} is not allowed; allowed: {', '.join(DEVICES)}")
    params = spec.get("params", {})
    if not isinstance(params, Mapping):
        raise ValueError("spec field 'params' must be a JSON object")
    if params and entry_point is None:
        raise ValueError("spec field 'params' is only for an 'entry_point'; the builtin trainers take named fields")

    return TrainingSpec(
        trainer=trainer,
        entry_point=entry_point,
        target=target,
        features=tuple(features) if features is not None else None,
        subject_column=subject,
        hidden=tuple(int(h) for h in hidden),
        epochs=_int(spec, "epochs", 20, 1, MAX_EPOCHS),
        batch_size=_int(spec, "batch_size", 64, 1, MAX_BATCH),
        lr=float(lr),
        seed=_int(spec, "seed", 0, 0, MAX_SEED),
        validation_fraction=float(fraction),
        threads=_int(spec, "threads", 1, 1, settings.max_threads),
        time_limit_s=float(limit),
        device=str(device),
        params=dict(params),
    )


# -- inputs -----------------------------------------------------------------------------------------------------
def input_path(entry: Mapping[str, Any]) -> Path:
    """The local CSV file an input entry names (``file://`` URI or absolute path)."""
    name = f"{entry.get('dataset')} v{entry.get('version')}"
    uri = entry.get("uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"input {name} has no file: the local compute backend reads local CSV files only")
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        raise ValueError(f"input {name} is at {uri}: the local compute backend reads local files (file://) only")
    if not path.is_file():
        raise ValueError(f"input {name}: the file {path} does not exist")
    return path


def read_header(path: Path) -> list[str]:
    """The first row of a CSV file."""
    with path.open("r", encoding="utf-8", newline="") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            raise ValueError(f"{path.name} is empty: it has no header row") from None


def check_inputs(inputs: object, spec: TrainingSpec) -> list[Path]:
    """Check every input is a local CSV file whose header holds the columns the spec names."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
        raise ValueError("the job has no inputs: give at least one dataset")
    paths = []
    for entry in inputs:
        if not isinstance(entry, Mapping):
            raise ValueError("each job input must be an object with 'dataset', 'version' and 'uri'")
        path = input_path(entry)
        header = read_header(path)
        name = f"{entry.get('dataset')} v{entry.get('version')}"
        wanted = [("target", spec.target), ("subject_column", spec.subject_column)]
        wanted += [("features", f) for f in spec.features or ()]
        for field_name, column in wanted:
            if column is not None and column not in header:
                shown = ", ".join(header[:50]) + (", ..." if len(header) > 50 else "")
                raise ValueError(f"spec field {field_name!r}: column {column!r} is not in {name} (columns: {shown})")
        paths.append(path)
    return paths
