"""Names of a tabular model's features, so that an attribution reads "depth: +0.12", not "[2]: +0.12".

In this order: the model configuration's ``metadata.features`` (or ``feature_names``) when it has one
name per element; else the featuriser the configuration's ``input_preprocessing`` names (the genomics
and hospital-operations featurisers keep their ``FEATURE_NAMES``; a Morgan fingerprint's elements are
its bits); else ``<input>[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medserve.clinical.genomics.variant_features import FEATURE_NAMES as VARIANT_FEATURES
from medserve.clinical.operations.forecast_features import FEATURE_NAMES as FORECAST_FEATURES

#: Featurisers a configuration's ``input_preprocessing`` may name, with their feature names.
FEATURISERS: dict[str, tuple[str, ...]] = {
    "medserve.clinical.genomics.variant_features": VARIANT_FEATURES,
    "medserve.clinical.operations.forecast_features": FORECAST_FEATURES,
}


def feature_names(metadata: Mapping[str, Any], input_name: str, size: int) -> list[str]:
    """One name per element of a flat input of ``size`` elements."""
    for key in ("features", "feature_names"):
        names = metadata.get(key)
        if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
            return list(names)
    described = str(metadata.get("input_preprocessing", ""))
    for featuriser, known in FEATURISERS.items():
        if featuriser in described and len(known) == size:
            return list(known)
    if "morgan" in described.lower():
        return [f"morgan_bit_{i}" for i in range(size)]
    return [f"{input_name}[{i}]" for i in range(size)]


def top_features(attributions: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` features of largest absolute attribution, largest first, as (name, attribution)."""
    flat = np.asarray(attributions, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")[: max(0, k)]
    return [(names[i], float(flat[i])) for i in order]
