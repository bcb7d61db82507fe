"""The builtin trainers ``tabular_classifier`` and ``tabular_regressor``: a torch MLP on standardised features.

Runs only inside the worker's trainer process. Deterministic from the seed: the split, the initial weights
and the batch order all come from it, and torch runs with deterministic algorithms; the same seed, data and
thread count give the same weights and metrics (and the same ONNX bytes).

The model's graph takes raw feature values: standardisation (mean and standard deviation of the training
rows) is its first layer, and a regressor's last layer undoes the target's standardisation. A classifier
answers ``probabilities`` (softmax, classes in ``classes`` order); a regressor answers ``prediction``.

The model is exported once with ``torch.export`` (batch dimension dynamic): that program is saved as
``model.pt2`` (what the ``torch`` serving runtime loads, on a GPU or the CPU) and translated to
``model.onnx`` (what the ``onnxruntime`` runtime loads). Both are checked against the eager torch model on
up to 256 rows before the artifact is accepted: ONNX Runtime on the ONNX file, and the saved program as
``torch.export.load`` reads it back.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from falaj.plugins.local_compute import artifact, metrics
from falaj.plugins.local_compute.data import JobError, Tabular
from falaj.plugins.local_compute.spec import TrainingSpec

log = logging.getLogger("falaj.local_compute.trainer")
INPUT = "input"
#: ONNX Runtime's answers may differ from torch's by at most atol + rtol * |torch|.
RTOL, ATOL = 1e-3, 1e-4
CHECK_ROWS = 256
EXAMPLE_ROWS = 4
Progress = Callable[[int, dict[str, float]], None]


class Standardise(nn.Module):
    """``(x - mean) / std`` with the training rows' statistics, as fixed buffers in the graph."""

    def __init__(self, mean: npt.NDArray[np.float64], std: npt.NDArray[np.float64]) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(inputs: int, hidden: tuple[int, ...], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Raw features in, class probabilities out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


class Regressor(nn.Module):
    """Raw features in, predictions on the target's own scale out."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.y_mean = mean
        self.y_std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out.squeeze(-1) * self.y_std + self.y_mean


@dataclass(frozen=True)
class Trained:
    metrics: dict[str, float]
    manifest: dict[str, Any]
    rows: dict[str, int]


def resolve_device(wanted: str) -> torch.device:
    if wanted == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if wanted == "cuda" and not available:
        raise JobError("spec field 'device' is 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return torch.device("cuda" if available else "cpu")


def _classes(values: list[str]) -> list[str]:
    distinct = set(values)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def _split(n: int, fraction: float, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * fraction)
    if n - n_val < 1:
        raise JobError(f"{n} rows leave nothing to train on with validation_fraction {fraction}")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _scale(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def train(table: Tabular, spec: TrainingSpec, out: Path, progress: Progress) -> Trained:
    """Train, export to ``out`` (``model.onnx``, ``model.onnx.data``, ``model.pt2``, ``falaj-model.json``)
    and check it."""
    started = time.monotonic()
    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    classify = spec.task == "classification"
    n = len(table.x)
    if n < 2:
        raise JobError(f"the inputs hold {n} rows: too few to train on")
    train_idx, val_idx = _split(n, spec.validation_fraction, spec.seed)
    mean, std = _scale(table.x[train_idx])
    classes: list[str] = []
    y_all: npt.NDArray[Any]
    if classify:
        classes = _classes(table.y_text)
        if len(classes) < 2:
            raise JobError(f"the target {table.target!r} has a single class {classes}: nothing to classify")
        index = {c: i for i, c in enumerate(classes)}
        y_all = np.array([index[v] for v in table.y_text], dtype=np.int64)
        y_mean, y_std = 0.0, 1.0
    else:
        numbers = np.array([_number(v, table.target) for v in table.y_text], dtype=np.float64)
        y_mean, y_std = float(numbers[train_idx].mean()), float(numbers[train_idx].std()) or 1.0
        y_all = numbers
    log.info(
        "training %s on %d rows (%d train, %d validation), %d features, device %s, %d thread(s)",
        spec.trainer,
        n,
        len(train_idx),
        len(val_idx),
        len(table.features),
        device,
        spec.threads,
    )
    if table.ignored:
        log.info("columns left out of the features (not numeric): %s", ", ".join(table.ignored))

    net = nn.Sequential(
        Standardise(mean, std), mlp(len(table.features), spec.hidden, len(classes) if classify else 1)
    ).to(device)
    x = torch.tensor(table.x, dtype=torch.float32, device=device)
    if classify:
        y = torch.tensor(y_all, dtype=torch.int64, device=device)
        loss_fn: nn.Module = nn.CrossEntropyLoss()
    else:
        y = torch.tensor((y_all - y_mean) / y_std, dtype=torch.float32, device=device)
        loss_fn = nn.MSELoss()
    x_train, y_train = x[torch.from_numpy(train_idx).to(device)], y[torch.from_numpy(train_idx).to(device)]
    eval_idx = val_idx if len(val_idx) else train_idx
    x_eval = x[torch.from_numpy(eval_idx).to(device)]
    optimiser = torch.optim.Adam(net.parameters(), lr=spec.lr)
    generator = torch.Generator().manual_seed(spec.seed)

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            raw = net(x_eval)
        net.train()
        if classify:
            proba = torch.softmax(raw, dim=-1).cpu().numpy().astype(np.float64)
            return metrics.classification(y_all[eval_idx], proba)
        prediction = raw.squeeze(-1).cpu().numpy().astype(np.float64) * y_std + y_mean
        return metrics.regression(y_all[eval_idx], prediction)

    train_loss = float("nan")
    for epoch in range(1, spec.epochs + 1):
        order = torch.randperm(len(train_idx), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), spec.batch_size):
            batch = order[start : start + spec.batch_size]
            optimiser.zero_grad()
            output = net(x_train[batch])
            loss = loss_fn(output if classify else output.squeeze(-1), y_train[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.item()) * len(batch)
        train_loss = total / len(order)
        scores = {"train_loss": train_loss, **{f"val_{k}": v for k, v in evaluate().items()}}
        log.info("epoch %d/%d %s", epoch, spec.epochs, " ".join(f"{k}={v:.6g}" for k, v in scores.items()))
        progress(epoch, scores)

    final = {
        **evaluate(),
        "train_loss": train_loss,
        "train_rows": float(len(train_idx)),
        "validation_rows": float(len(val_idx)),
        "epochs": float(spec.epochs),
    }
    net = net.cpu().eval()
    model: nn.Module = Classifier(net) if classify else Regressor(net, y_mean, y_std)
    output_name = "probabilities" if classify else "prediction"
    check = export(model, table.x, out, output_name)
    manifest = {
        "task": spec.task,
        "trainer": spec.trainer,
        "model_file": artifact.MODEL_FILE,
        "input": {"name": INPUT, "dtype": "float32", "shape": [-1, len(table.features)]},
        "outputs": [
            {"name": output_name, "dtype": "float32", "shape": [-1, len(classes)] if classify else [-1]},
        ],
        "features": table.features,
        "target": table.target,
        "classes": classes if classify else None,
        "normalisation": {
            "kind": "standardise",
            "in_graph": True,
            "mean": mean.tolist(),
            "std": std.tolist(),
            **({} if classify else {"target_mean": y_mean, "target_std": y_std}),
        },
        "hidden": list(spec.hidden),
        "opset": artifact.opset(out),
        "frameworks": artifact.versions(),
        "seed": spec.seed,
        "code_digest": artifact.sha256_file(Path(__file__)),
        "metrics": final,
        "check": check["check"],
        "torch_program": check["torch_program"],
        "example": check["example"],
    }
    artifact.write_manifest(out, manifest)
    log.info("trained and exported in %.1f s: %s", time.monotonic() - started, final)
    return Trained(metrics=final, manifest=manifest, rows={"train": len(train_idx), "validation": len(val_idx)})


def _number(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise JobError(f"the regression target {column!r} holds {text!r}, which is not a number") from None
    if not np.isfinite(value):
        raise JobError(f"the regression target {column!r} holds {text!r}, which is not a finite number")
    return value


def export(model: nn.Module, x: npt.NDArray[np.float64], out: Path, output_name: str) -> dict[str, Any]:
    """Export with ``torch.export`` (batch dimension dynamic), save the program (``model.pt2``) and translate it
    to ONNX with torch's dynamo exporter; then compare ONNX Runtime's answers, and the saved program's as
    loaded back, with torch's on up to 256 training rows and raise a ``JobError`` when either differs beyond
    the tolerance.

    The example kept in the manifest is made of synthetic rows (the training rows' mean plus seeded noise of
    their spread), never of training records: the artifact must not carry personal data.
    """
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # the exporter's own deprecations, not ours
    sample = torch.tensor(x[:CHECK_ROWS], dtype=torch.float32)
    spread = x.std(axis=0) if len(x) > 1 else np.ones(x.shape[1])
    noise = np.random.default_rng(0).standard_normal((EXAMPLE_ROWS, x.shape[1]))
    synthetic = torch.tensor(x.mean(axis=0) + noise * spread, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        expected = model(sample).numpy()
        example_output = model(synthetic).numpy()
    try:
        program = torch.export.export(model, (synthetic,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:
        raise JobError(f"torch.export cannot export the model: {type(exc).__name__}: {exc}") from exc
    # The saved program keeps the example inputs it was exported with: the synthetic rows, never training records.
    torch.export.save(program, out / artifact.TORCH_FILE)
    torch.onnx.export(
        program,
        (synthetic,),
        str(out / artifact.MODEL_FILE),
        input_names=[INPUT],
        output_names=[output_name],
        dynamo=True,
        external_data=True,
        verbose=False,
    )
    session = artifact.session(out)
    checks = [(sample.numpy(), expected), (synthetic.numpy(), example_output)]

    def onnx_runtime(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        answer: npt.NDArray[np.float32] = session.run([output_name], {INPUT: rows})[0]
        return answer

    worst = _compare("ONNX Runtime", onnx_runtime, checks)
    saved = torch.export.load(out / artifact.TORCH_FILE).module()

    def torch_program(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            answer: npt.NDArray[np.float32] = saved(torch.from_numpy(rows)).numpy()
        return answer

    worst_program = _compare("The saved torch program", torch_program, checks)
    rows = len(sample) + EXAMPLE_ROWS
    return {
        "check": {"rows": rows, "max_abs_diff": worst, "rtol": RTOL, "atol": ATOL, "runtime": "onnxruntime"},
        "torch_program": {
            "file": artifact.TORCH_FILE,
            "format": artifact.TORCH_FORMAT,
            "torch": torch.__version__,
            "check": {"rows": rows, "max_abs_diff": worst_program, "rtol": RTOL, "atol": ATOL},
        },
        "example": {INPUT: synthetic.tolist(), output_name: example_output.tolist()},
    }


def _compare(
    who: str,
    run: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    checks: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
) -> float:
    """The largest difference between ``run``'s answers and torch's; a ``JobError`` past the tolerance."""
    worst = 0.0
    for rows, want in checks:
        got = run(rows)
        if got.shape != want.shape:
            raise JobError(f"{who} answers shape {got.shape} where torch answers {want.shape}: export refused")
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            raise JobError(
                f"{who}'s outputs differ from torch's by up to {diff:.3g} (tolerance {ATOL} + {RTOL} x "
                "|torch|): the export is refused"
            )
    return worst
