"""Per-variant serving metrics, a sample-ratio-mismatch check, and their Prometheus and JSON views.

Each worker process keeps plain counters (no lock: one event loop per worker). Latency goes into a
log-spaced histogram (8 buckets per octave from 10 us, about 9 % wide, so p50/p99 read from it are within a
few percent); snapshots of several workers merge by adding counts. The prediction distribution is kept per
output: argmax class counts and column means for score matrices, value counts for labels, mean/min/max for
single scores.

The sample-ratio-mismatch check is Pearson's chi-square test of the requests each primary variant received
by the traffic split against the configured weights; its p-value uses the closed form of the chi-square
survival function for integer degrees of freedom (no scipy needed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATENCY_BASE_S = 1e-5
STEPS_PER_OCTAVE = 8
LATENCY_BUCKETS = 8 * 25  # 10 us .. ~335 s
MAX_CLASSES = 64
FLUSH_ROWS = 4096  # output rows kept before their distribution is computed
FLUSH_BATCHES = 256
SRM_THRESHOLD = 0.001
SRM_MIN_EXPECTED = 5.0
ERROR_KINDS = ("invalid", "failed", "overloaded")


def latency_bound(index: int) -> float:
    """Upper bound (seconds) of latency bucket ``index``."""
    return float(LATENCY_BASE_S * 2.0 ** (index / STEPS_PER_OCTAVE))


class LatencyHistogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * LATENCY_BUCKETS
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        if seconds <= LATENCY_BASE_S:
            index = 0
        else:
            index = min(LATENCY_BUCKETS - 1, math.ceil(STEPS_PER_OCTAVE * math.log2(seconds / LATENCY_BASE_S)))
        self.counts[index] += 1
        self.count += 1
        self.total += seconds

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "count": self.count, "sum": self.total}

    def merge(self, data: Mapping[str, Any]) -> None:
        for i, c in enumerate(data.get("counts", [])[:LATENCY_BUCKETS]):
            self.counts[i] += int(c)
        self.count += int(data.get("count", 0))
        self.total += float(data.get("sum", 0.0))

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), interpolated geometrically inside its bucket; None when empty."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                low = latency_bound(i - 1) if i else 0.0
                high = latency_bound(i)
                frac = (rank - seen) / c
                if low <= 0:
                    return high * frac
                return float(low * (high / low) ** frac)
            seen += c
        return latency_bound(LATENCY_BUCKETS - 1)


@dataclass
class OutputStats:
    """The distribution of one output over the rows a variant answered."""

    rows: int = 0
    classes: list[int] = field(default_factory=list)  # argmax counts (score matrices) or label value counts
    other: int = 0  # labels outside 0..MAX_CLASSES-1
    sums: list[float] = field(default_factory=list)  # column sums (score matrices) or [sum] (single scores)
    minimum: float | None = None
    maximum: float | None = None
    _pending: list[np.ndarray[Any, Any]] = field(default_factory=list, repr=False)
    _pending_rows: int = 0

    def observe(self, arr: np.ndarray[Any, Any]) -> None:
        """Count a batch's output. Batches are kept (by reference) and analysed together every
        ``FLUSH_ROWS`` rows, so the few numpy calls the analysis takes are paid per thousands of rows, not
        per batch (they cost ~12 us, as much as running a small model)."""
        if arr.ndim == 0 or arr.shape[0] == 0:
            return
        self._pending.append(arr)
        self._pending_rows += arr.shape[0]
        if self._pending_rows >= FLUSH_ROWS or len(self._pending) >= FLUSH_BATCHES:
            self.flush()

    def flush(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        if len(pending) > 1:
            with contextlib.suppress(ValueError):  # shapes past the first dimension differ: one by one
                pending = [np.concatenate(pending, axis=0)]
        for arr in pending:
            self._analyse(arr)

    def _analyse(self, arr: np.ndarray[Any, Any]) -> None:
        n = arr.shape[0]
        width = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
        kind = arr.dtype.kind
        if kind == "f" and arr.ndim == 2 and 1 < width <= MAX_CLASSES:
            counts = np.bincount(np.argmax(arr, axis=1), minlength=width)
            self._add_classes(counts)
            self._add_sums(arr.sum(axis=0, dtype=np.float64))
        elif kind in "iub" and width == 1:
            values = arr.reshape(n).astype(np.int64, copy=False)
            inside = values[(values >= 0) & (values < MAX_CLASSES)]
            self.other += n - inside.size
            if inside.size:
                self._add_classes(np.bincount(inside))
        elif kind == "f" and width == 1:
            flat = arr.reshape(n).astype(np.float64, copy=False)
            self._add_sums(np.array([flat.sum()]))
            low, high = float(flat.min()), float(flat.max())
            self.minimum = low if self.minimum is None else min(self.minimum, low)
            self.maximum = high if self.maximum is None else max(self.maximum, high)
        self.rows += n

    def _add_classes(self, counts: np.ndarray[Any, Any] | Sequence[int]) -> None:
        if len(self.classes) < len(counts):
            self.classes.extend([0] * (len(counts) - len(self.classes)))
        for i, c in enumerate(counts):
            self.classes[i] += int(c)

    def _add_sums(self, sums: np.ndarray[Any, Any] | Sequence[float]) -> None:
        if len(self.sums) < len(sums):
            self.sums.extend([0.0] * (len(sums) - len(self.sums)))
        for i, s in enumerate(sums):
            self.sums[i] += float(s)

    def to_json(self) -> dict[str, Any]:
        self.flush()
        return {
            "rows": self.rows,
            "classes": list(self.classes),
            "other": self.other,
            "sums": list(self.sums),
            "min": self.minimum,
            "max": self.maximum,
        }

    def merge(self, data: Mapping[str, Any]) -> None:
        self.flush()
        self.rows += int(data.get("rows", 0))
        self._add_classes([int(c) for c in data.get("classes", [])])
        self.other += int(data.get("other", 0))
        self._add_sums([float(s) for s in data.get("sums", [])])
        for key in ("min", "max"):
            value = data.get(key)
            if value is None:
                continue
            if key == "min":
                self.minimum = value if self.minimum is None else min(self.minimum, value)
            else:
                self.maximum = value if self.maximum is None else max(self.maximum, value)

    def summary(self) -> dict[str, Any]:
        self.flush()
        out: dict[str, Any] = {"rows": self.rows}
        if self.classes:
            total = sum(self.classes) + self.other
            out["class_counts"] = {str(i): c for i, c in enumerate(self.classes)}
            out["class_shares"] = {str(i): round(c / total, 6) for i, c in enumerate(self.classes)} if total else {}
            if self.other:
                out["other"] = self.other
        if self.sums and self.rows:
            means = [round(s / self.rows, 6) for s in self.sums]
            out["mean"] = means[0] if len(means) == 1 else means
        if self.minimum is not None:
            out["min"], out["max"] = self.minimum, self.maximum
        return out


@dataclass
class VariantMetrics:
    label: str
    model: str
    version: str
    role: str  # primary | shadow
    weight: float
    requests: int = 0  # answered successfully (shadows: copies answered)
    routed: int = 0  # reached this variant through the traffic split (what the SRM check counts)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    rows: int = 0
    batches: int = 0
    batch_requests: int = 0
    batch_rows: dict[int, int] = field(default_factory=dict)  # rows in a batch -> batches
    run_seconds: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    shadow_copies: int = 0
    shadow_dropped: int = 0

    def observe_batch(self, rows: int, requests: int, names: Sequence[str], arrays: Sequence[Any], secs: float) -> None:
        self.rows += rows
        self.batches += 1
        self.batch_requests += requests
        self.batch_rows[rows] = self.batch_rows.get(rows, 0) + 1
        self.run_seconds += secs
        for name, arr in zip(names, arrays, strict=False):
            stats = self.outputs.get(name)
            if stats is None:
                stats = self.outputs[name] = OutputStats()
            if isinstance(arr, np.ndarray):
                stats.observe(arr)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.model,
            "version": self.version,
            "role": self.role,
            "weight": self.weight,
            "requests": self.requests,
            "routed": self.routed,
            "errors": dict(self.errors),
            "rows": self.rows,
            "batches": self.batches,
            "batch_requests": self.batch_requests,
            "batch_rows": {str(k): v for k, v in self.batch_rows.items()},
            "run_seconds": self.run_seconds,
            "latency": self.latency.to_json(),
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            "shadow_copies": self.shadow_copies,
            "shadow_dropped": self.shadow_dropped,
        }

    def merge(self, data: Mapping[str, Any]) -> None:
        for key in ("requests", "routed", "rows", "batches", "batch_requests", "shadow_copies", "shadow_dropped"):
            setattr(self, key, getattr(self, key) + int(data.get(key, 0)))
        self.run_seconds += float(data.get("run_seconds", 0.0))
        for kind, count in data.get("errors", {}).items():
            self.errors[kind] = self.errors.get(kind, 0) + int(count)
        for rows, count in data.get("batch_rows", {}).items():
            self.batch_rows[int(rows)] = self.batch_rows.get(int(rows), 0) + int(count)
        self.latency.merge(data.get("latency", {}))
        for name, stats in data.get("outputs", {}).items():
            self.outputs.setdefault(name, OutputStats()).merge(stats)

    def summary(self) -> dict[str, Any]:
        lat = self.latency

        def ms(q: float) -> float | None:
            value = lat.quantile(q)
            return None if value is None else round(value * 1000, 3)

        sizes = sorted(self.batch_rows)
        return {
            "version": self.version,
            "label": self.label,
            "model": self.model,
            "role": self.role,
            "weight": self.weight,
            "requests": self.requests,
            "routed": self.routed,
            "errors": dict(self.errors),
            "rows": self.rows,
            "batches": self.batches,
            "batch": {
                "mean_rows": round(self.rows / self.batches, 3) if self.batches else None,
                "mean_requests": round(self.batch_requests / self.batches, 3) if self.batches else None,
                "max_rows": sizes[-1] if sizes else 0,
                "rows_histogram": {str(k): self.batch_rows[k] for k in sizes},
                "run_ms_mean": round(self.run_seconds / self.batches * 1000, 4) if self.batches else None,
            },
            "latency_ms": {
                "count": lat.count,
                "mean": round(lat.total / lat.count * 1000, 3) if lat.count else None,
                "p50": ms(0.5),
                "p90": ms(0.9),
                "p99": ms(0.99),
            },
            "predictions": {k: v.summary() for k, v in self.outputs.items()},
            **(
                {"shadow": {"copies": self.shadow_copies, "dropped": self.shadow_dropped}}
                if self.role == "shadow"
                else {}
            ),
        }


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom (integer df >= 1), in closed form.

    Even df: ``exp(-x/2) * sum_{i<df/2} (x/2)^i / i!``; odd df: ``erfc(sqrt(x/2))`` plus
    ``exp(-x/2) * sum_{i=1}^{(df-1)/2} (x/2)^(i-1/2) / Gamma(i+1/2)``; terms summed in log space.
    """
    if df < 1:
        raise ValueError("df must be at least 1")
    if x <= 0:
        return 1.0
    h = x / 2.0
    log_h = math.log(h)
    if df % 2 == 0:
        logs = [-h + i * log_h - math.lgamma(i + 1) for i in range(df // 2)]
        base = 0.0
    else:
        logs = [-h + (i - 0.5) * log_h - math.lgamma(i + 0.5) for i in range(1, (df - 1) // 2 + 1)]
        base = math.erfc(math.sqrt(h))
    if logs:
        top = max(logs)
        base += math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, max(0.0, base))


def srm_check(observed: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, Any]:
    """Chi-square test of observed split counts against configured shares; ``srm`` when p < 0.001."""
    labels = [k for k in shares if shares[k] > 0]
    counts = {k: int(observed.get(k, 0)) for k in labels}
    total = sum(counts.values())
    result: dict[str, Any] = {
        "test": "chi-square goodness of fit",
        "threshold": SRM_THRESHOLD,
        "observed": counts,
        "expected_share": {k: round(shares[k], 6) for k in labels},
        "total": total,
    }
    if len(labels) < 2:
        return {**result, "applicable": False, "reason": "one variant takes all traffic", "srm": False}
    expected = {k: total * shares[k] for k in labels}
    if min(expected.values()) < SRM_MIN_EXPECTED:
        return {**result, "applicable": False, "reason": "too few requests yet", "p_value": None, "srm": False}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in labels)
    p = chi2_sf(chi2, len(labels) - 1)
    return {
        **result,
        "applicable": True,
        "chi2": round(chi2, 6),
        "df": len(labels) - 1,
        "p_value": p,
        "srm": p < SRM_THRESHOLD,
    }


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, VariantMetrics]:
    """Add up the per-variant metrics of several workers (their ``to_json`` snapshots)."""
    merged: dict[str, VariantMetrics] = {}
    for snap in snapshots:
        for data in snap.get("variants", []):
            label = str(data["label"])
            target = merged.get(label)
            if target is None:
                target = merged[label] = VariantMetrics(
                    label, str(data["model"]), str(data["version"]), str(data["role"]), float(data["weight"])
                )
            target.merge(data)
    return merged


def prometheus_families(
    deployment: str, variants: Mapping[str, VariantMetrics], rejected: int, srm: Mapping[str, Any]
) -> Iterator[Any]:
    """Prometheus metric families for ``prometheus_client``'s text exposition."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    labels = ["deployment", "model", "version", "role"]
    requests = CounterMetricFamily("falaj_inference_requests", "Requests answered successfully", labels=labels)
    routed = CounterMetricFamily("falaj_inference_routed_requests", "Requests sent by the traffic split", labels=labels)
    errors = CounterMetricFamily("falaj_inference_errors", "Requests that failed, by kind", labels=[*labels, "kind"])
    rows = CounterMetricFamily("falaj_inference_rows", "Rows run through the model", labels=labels)
    batches = CounterMetricFamily("falaj_inference_batches", "session.run calls", labels=labels)
    latency = HistogramMetricFamily(
        "falaj_inference_latency_seconds", "Request latency inside the server", labels=labels
    )
    batch_rows = HistogramMetricFamily("falaj_inference_batch_rows", "Rows per batch", labels=labels)
    predictions = CounterMetricFamily(
        "falaj_inference_predictions", "Rows per predicted class (argmax or label)", labels=[*labels, "output", "class"]
    )
    means = GaugeMetricFamily(
        "falaj_inference_output_mean", "Mean output value per column", labels=[*labels, "output", "column"]
    )
    shadow = CounterMetricFamily("falaj_inference_shadow_dropped", "Shadow copies dropped (queue full)", labels=labels)
    for v in variants.values():
        lv = [deployment, v.model, v.version, v.role]
        requests.add_metric(lv, v.requests)
        routed.add_metric(lv, v.routed)
        for kind, count in v.errors.items():
            errors.add_metric([*lv, kind], count)
        rows.add_metric(lv, v.rows)
        batches.add_metric(lv, v.batches)
        cumulative, buckets = 0, []
        for i, c in enumerate(v.latency.counts):
            cumulative += c
            if i % STEPS_PER_OCTAVE == 0:
                buckets.append((repr(latency_bound(i)), cumulative))
        buckets.append(("+Inf", v.latency.count))
        latency.add_metric(lv, buckets, v.latency.total)
        bounds = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        brow = [(str(b), sum(c for r, c in v.batch_rows.items() if r <= b)) for b in bounds]
        brow.append(("+Inf", v.batches))
        batch_rows.add_metric(lv, brow, float(v.rows))
        for name, stats in v.outputs.items():
            for cls, count in enumerate(stats.classes):
                predictions.add_metric([*lv, name, str(cls)], count)
            if stats.rows:
                for col, total in enumerate(stats.sums):
                    means.add_metric([*lv, name, str(col)], total / stats.rows)
        if v.role == "shadow":
            shadow.add_metric(lv, v.shadow_dropped)
    yield from (requests, routed, errors, rows, batches, latency, batch_rows, predictions, means, shadow)
    rej = CounterMetricFamily(
        "falaj_inference_rejected", "Requests refused before routing (malformed)", labels=["deployment"]
    )
    rej.add_metric([deployment], rejected)
    yield rej
    p = srm.get("p_value")
    pv = GaugeMetricFamily(
        "falaj_inference_srm_p_value", "Sample-ratio-mismatch chi-square p-value", labels=["deployment"]
    )
    pv.add_metric([deployment], float("nan") if p is None else float(p))
    yield pv
    flag = GaugeMetricFamily(
        "falaj_inference_srm", "1 when the traffic split mismatches its weights (p < 0.001)", labels=["deployment"]
    )
    flag.add_metric([deployment], 1.0 if srm.get("srm") else 0.0)
    yield flag
