"""Half-Space Trees (Tan, Ting & Liu 2011) from River, on min-max scaled values.

Why HST: an online cousin of the isolation forest with constant memory and constant time per
point. Random half-space splits of the feature space are fixed up front; each tree counts how
many recent points fall in each region (mass, over windows of ``window_size`` points), and a point
in a region that held little mass in the last window is anomalous. It learns the series' normal
range with no distributional assumption and forgets it window by window.

HST assumes features in ``[0, 1]``. Values are scaled by the minimum and maximum of the points
seen *before* each point (no lookahead), with a ``margin`` on each side, and clipped into
``[0, 1]``, so a value well past the record lands in a region that held no mass.

River's score ``s`` is one minus the point's mass profile over its maximum; ordinary points sit
near 0.9 and anomalies near 1, a range too narrow for a quantile sketch with relative accuracy
to resolve. The score reported is ``-ln(1 - s)``: monotone in ``s`` (the same ranking), finite
(a tree's root always holds the last window's mass), and spread out where alerts are decided.
River works one point at a time, so this
detector loops over points (tens of microseconds each); it needs River (``tideflow[ml]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ai._imports import require
from .base import as_float_array

_TINY = 1e-300


@dataclass
class HalfSpaceTrees:
    """River's ``anomaly.HalfSpaceTrees`` per series, scored ``-ln(1 - s)``; NaN for the first
    ``window_size`` points (before the trees' first reference window is complete)."""

    n_trees: int = 10
    height: int = 8
    window_size: int = 250
    seed: int = 42
    margin: float = 0.25
    """Room left on each side of the range seen so far, as a share of it: a value past the
    record lands in a region no past point filled, instead of on the record itself."""
    _model: Any = field(default=None, init=False, repr=False)
    _n: int = field(default=0, init=False, repr=False)
    _low: float = field(default=math.inf, init=False, repr=False)
    _high: float = field(default=-math.inf, init=False, repr=False)

    def _build(self) -> Any:
        anomaly = require("river.anomaly", "ml", what="HalfSpaceTrees")
        return anomaly.HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )

    def score(self, values: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        x = as_float_array(values)
        if self._model is None:
            self._model = self._build()
        model, low, high, n = self._model, self._low, self._high, self._n
        pad = self.margin
        pad_share = pad / (1.0 + 2.0 * pad)
        out = np.full(len(x), np.nan)
        for i, value in enumerate(x.tolist()):
            span = (high - low) * (1.0 + 2.0 * pad)
            scaled = min(max((value - low) / span + pad_share, 0.0), 1.0) if span > 0 else 0.5
            features = {"x": scaled}
            if n >= self.window_size:
                out[i] = -math.log(max(1.0 - model.score_one(features), _TINY))
            model.learn_one(features)
            low, high, n = min(low, value), max(high, value), n + 1
        self._low, self._high, self._n = low, high, n
        return out
