"""The parity check: an exported model must give the eager model's outputs on real samples.

Both run on the same samples at two batch sizes (1 and all of them), which also proves the
exported batch axis is dynamic. Float outputs may differ by at most `atol` (absolute); integer and
boolean outputs (an argmax, an action) must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytron.serving.errors import ParityError

__all__ = ["DEFAULT_ATOL", "default_atol", "OutputParity", "ParityReport", "Runner", "check_parity", "raise_for_parity"]

#: A model under comparison: numpy inputs in the export's input order -> outputs in its output order.
Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]

#: Default absolute tolerance of float outputs, by dtype: fp32 kernels of two runtimes differ by
#: ~1e-6 on these models; 1e-4 leaves room for deeper ones without hiding a wrong graph.
DEFAULT_ATOL = {"float16": 1e-2, "float32": 1e-4, "float64": 1e-6}

FORMAT_TITLES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def default_atol(dtype: Any) -> float:
    """The tolerance of an output of this dtype: 0 (exact) for integers and booleans."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        return 0.0
    return DEFAULT_ATOL.get(dtype.name, DEFAULT_ATOL["float32"])


@dataclass(frozen=True)
class OutputParity:
    """How far one output of the exported model is from the eager model's."""

    name: str
    dtype: str
    max_abs_diff: float
    """Largest absolute difference over every element and batch size (inf where a NaN appears in only one)."""
    atol: float
    batch_size: int
    """The batch size at which `max_abs_diff` was seen."""
    problem: str = ""
    """A mismatch that is not a number: a different shape or dtype."""

    @property
    def passed(self) -> bool:
        return not self.problem and self.max_abs_diff <= self.atol


@dataclass(frozen=True)
class ParityReport:
    """The outcome of comparing one exported file with the eager model."""

    format: str
    samples: int
    batch_sizes: tuple[int, ...]
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "format": self.format, "samples": self.samples, "batch_sizes": list(self.batch_sizes),
            "outputs": {o.name: {"max_abs_diff": _finite(o.max_abs_diff), "atol": o.atol, "dtype": o.dtype, **({"problem": o.problem} if o.problem else {})}
                        for o in self.outputs},
        }


def parity_batch_sizes(samples: int) -> tuple[int, ...]:
    """1 and the full sample batch; with a single sample, 1 and 2 (the sample twice)."""
    return (1, samples) if samples > 1 else (1, 2)


def check_parity(
    format: str, reference: Runner, candidate: Runner, inputs: Sequence[np.ndarray], output_names: Sequence[str], *, atol: float | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> ParityReport:
    """Run both models on the same inputs at each batch size and compare every output.

    Args:
        format: `onnx` or `torchscript`, for the report.
        reference: The eager model.
        candidate: The exported file.
        inputs: One array per input, the samples along axis 0 (all the same length).
        output_names: Names of the outputs, in the order both runners return them.
        atol: Tolerance of every float output; None takes `default_atol` of each output's dtype.
            Integer outputs are always compared exactly.
        batch_sizes: Default: 1 and the number of samples.

    Returns:
        The report; call `raise_for_parity` to turn a failed one into a ParityError.
    """
    samples = int(inputs[0].shape[0])
    sizes = tuple(batch_sizes or parity_batch_sizes(samples))
    worst: dict[str, OutputParity] = {}
    for size in sizes:
        batch = [_rows(a, size) for a in inputs]
        expected, got = reference(batch), candidate(batch)
        for name, exp, out in zip(output_names, expected, got):
            tol = default_atol(exp.dtype) if (atol is None or not np.issubdtype(exp.dtype, np.floating)) else float(atol)
            result = _compare(name, np.asarray(exp), np.asarray(out), tol, size)
            previous = worst.get(name)
            if previous is None or (not previous.problem and (result.problem or result.max_abs_diff > previous.max_abs_diff)):
                worst[name] = result
    return ParityReport(format=format, samples=samples, batch_sizes=sizes, outputs=tuple(worst[n] for n in output_names))


def raise_for_parity(report: ParityReport, *, model: str, tracer_warnings: Sequence[str] = ()) -> None:
    """Raise a ParityError naming the format, each failing output, its difference and the tolerance.

    Raises:
        ParityError: the report did not pass.
    """
    failures = [o for o in report.outputs if not o.passed]
    if not failures:
        return
    title = FORMAT_TITLES.get(report.format, report.format)
    lines = []
    for o in failures:
        if o.problem:
            lines.append(f"output `{o.name}`: {o.problem}")
        elif o.atol == 0.0 and not np.issubdtype(np.dtype(o.dtype), np.floating):
            lines.append(f"output `{o.name}` ({o.dtype}) differs from the eager model's by up to {o.max_abs_diff:g} (max absolute difference, batch size "
                         f"{o.batch_size}); integer outputs must be equal (`--atol` applies to float outputs only)")
        else:
            lines.append(f"output `{o.name}` differs from the eager model's by up to {o.max_abs_diff:.3g} (max absolute difference, batch size "
                         f"{o.batch_size}), more than the tolerance {o.atol:g}")
    why = ("Likely causes: Python control flow or shapes that depend on the data, which tracing froze into the graph"
           + (f" (the tracer warned: {'; '.join(tracer_warnings[:2])})" if tracer_warnings else "")
           + ", or an op the exporter translates differently. If the difference is only numerical noise, raise the tolerance with `--atol` (`ExportConfig.atol`).")
    raise ParityError(f"the {title} export of `{model}` failed the parity check on {report.samples} samples at batch sizes "
                      f"{', '.join(map(str, report.batch_sizes))}: " + "; ".join(lines) + f". Nothing was written. {why}")


def _rows(a: np.ndarray, size: int) -> np.ndarray:
    """The first `size` samples, repeating them when there are fewer."""
    if size <= a.shape[0]:
        return a[:size]
    reps = math.ceil(size / a.shape[0])
    return np.concatenate([a] * reps)[:size]


def _compare(name: str, expected: np.ndarray, got: np.ndarray, atol: float, batch_size: int) -> OutputParity:
    dtype = expected.dtype.name
    if got.shape != expected.shape:
        return OutputParity(name, dtype, math.inf, atol, batch_size, f"shape {list(got.shape)} at batch size {batch_size}; the eager model's is {list(expected.shape)}")
    if got.dtype != expected.dtype:
        return OutputParity(name, dtype, math.inf, atol, batch_size, f"dtype {got.dtype.name}; the eager model's is {dtype}")
    if got.size == 0:
        return OutputParity(name, dtype, 0.0, atol, batch_size)
    if np.issubdtype(expected.dtype, np.floating):
        e, g = expected.astype(np.float64), got.astype(np.float64)
        diff = np.abs(g - e)
        both_nan = np.isnan(e) & np.isnan(g)
        diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), math.inf, diff))  # a NaN on one side only is a failure
        return OutputParity(name, dtype, float(diff.max()), atol, batch_size)
    if expected.dtype == np.bool_:
        return OutputParity(name, dtype, float(np.count_nonzero(expected != got) > 0), atol, batch_size)
    # As Python ints (object arrays): exact for int64 and uint64 alike, where float64 would round.
    mismatch = expected.ravel() != got.ravel()
    if not mismatch.any():
        return OutputParity(name, dtype, 0.0, atol, batch_size)
    diff = np.abs(expected.ravel()[mismatch].astype(object) - got.ravel()[mismatch].astype(object)).max()
    return OutputParity(name, dtype, float(diff), atol, batch_size)


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"
