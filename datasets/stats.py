"""Per-feature statistics gathered while shards are written, for drift detection when serving.

Count, mean, std, min and max are exact (Welford's streaming update). Histograms need a range
before counting, so they are computed at the end from a uniform reservoir of up to
`RESERVOIR_SIZE` samples, over the exact [min, max]. Vector fields of up to `MAX_PER_ELEMENT`
values get statistics per element (per input feature); larger arrays (token sequences) one set
over all their values. Integer labels get exact per-class counts. Encoded images get a count only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raytron.datasets.manifest import FieldSpec

__all__ = ["FieldStats", "RESERVOIR_SIZE", "HISTOGRAM_BINS", "MAX_PER_ELEMENT"]

RESERVOIR_SIZE = 4096
HISTOGRAM_BINS = 20
MAX_PER_ELEMENT = 1024


class FieldStats:
    """Streaming statistics of one field."""

    def __init__(self, spec: FieldSpec, *, seed: int = 0):
        self.spec = spec
        self.count = 0
        self._rng = np.random.default_rng(seed + 7919)
        self._classes: dict[int, int] = {}
        size = int(np.prod(spec.shape)) if spec.shape else 1
        self._per_element = spec.encoding == "npy" and 1 < size <= MAX_PER_ELEMENT
        self._mean = self._m2 = self._min = self._max = None
        self._reservoir: list[np.ndarray] = []

    def add(self, value: Any) -> None:
        self.count += 1
        if self.spec.encoding in ("png", "jpg"):
            return
        if self.spec.encoding == "cls":
            self._classes[int(value)] = self._classes.get(int(value), 0) + 1
        arr = np.asarray(value, dtype=np.float64)
        x = arr.reshape(-1) if self._per_element else np.array([arr.mean()]) if arr.size > 1 else arr.reshape(1)
        if self._mean is None:
            self._mean, self._m2 = np.zeros_like(x), np.zeros_like(x)
            self._min, self._max = x.copy(), x.copy()
        if arr.size > 1 and not self._per_element:  # big arrays: min/max over all values
            lo, hi = np.array([arr.min()]), np.array([arr.max()])
        else:
            lo = hi = x
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)
        np.minimum(self._min, lo, out=self._min)
        np.maximum(self._max, hi, out=self._max)
        sample = arr.reshape(-1) if (self._per_element or arr.size == 1) else arr.reshape(-1)[:: max(1, arr.size // 64)]
        if len(self._reservoir) < RESERVOIR_SIZE:
            self._reservoir.append(sample)
        else:
            j = int(self._rng.integers(0, self.count))
            if j < RESERVOIR_SIZE:
                self._reservoir[j] = sample

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        if self.spec.encoding in ("png", "jpg") or self._mean is None:
            return out
        std = np.sqrt(self._m2 / max(1, self.count - 1)) if self.count > 1 else np.zeros_like(self._mean)
        per = self._per_element
        out.update(
            per_element=per,
            mean=_list(self._mean, per), std=_list(std, per), min=_list(self._min, per), max=_list(self._max, per),
            histogram=self._histograms(),
        )
        if self._classes:
            out["class_counts"] = {str(k): v for k, v in sorted(self._classes.items())}
        return out

    def _histograms(self) -> Any:
        data = np.stack(self._reservoir) if self._per_element else np.concatenate(self._reservoir)
        if not self._per_element:
            return _hist(data, float(self._min[0]), float(self._max[0]))
        return [_hist(data[:, i], float(self._min[i]), float(self._max[i])) for i in range(data.shape[1])]


def _hist(values: np.ndarray, lo: float, hi: float) -> dict[str, Any]:
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(), "from_samples": int(len(values))}


def _list(x: np.ndarray, per_element: bool) -> Any:
    values = [round(float(v), 6) for v in x]
    return values if per_element else values[0]
