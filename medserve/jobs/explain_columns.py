"""Attribution columns in an offline job's results: the job spec's ``explain`` option.

``explain: {method: feature_ablation, top_k: 3}`` adds, for each scored item of a tabular workload
(one input, a feature vector), its ``top_k`` features of largest absolute attribution:
``explain_feature_1``, ``explain_attribution_1``, ... (a workload writing several rows per item, such
as a forecast per horizon, repeats them on each). Methods: ``feature_ablation``, ``occlusion`` and
``integrated_gradients`` (by finite differences); ``target`` (default: index 0 of the first output) and
the method's parameters as in the explain call. The perturbed inputs go through the job's scorer, in
the job's priority class (the lowest by default), each batch audited like the job's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from medserve.explanations.features import feature_names, top_features
from medserve.explanations.methods import MethodPlan, plan_method, run_perturbation
from medserve.explanations.target import Target, parse_target
from medserve.jobs.scoring import CoreScorer
from medserve.jobs.workload import Item
from medserve.values.errors import InvalidInput

METHODS = ("feature_ablation", "occlusion", "integrated_gradients")
MAX_TOP_K = 50


def check_option(option: Mapping[str, Any]) -> None:
    """Refuse a wrong ``explain`` option at submit (``InvalidInput`` naming it)."""
    method = option.get("method", "feature_ablation")
    if method not in METHODS:
        raise InvalidInput(f"job spec 'explain.method' must be one of {', '.join(METHODS)}, got {method!r}")
    top_k = option.get("top_k", 3)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(
            f"job spec 'explain.top_k' must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}"
        )


class ExplainColumns:
    """Adds attribution columns to a chunk's result table (called from the runner's thread)."""

    def __init__(self, option: Mapping[str, Any], scorer: CoreScorer, max_perturbations: int) -> None:
        check_option(option)
        self.option = dict(option)
        self.scorer = scorer
        self.top_k = int(option.get("top_k", 3))
        info = scorer.service.model_info(scorer.model, scorer.caller, scorer.version)
        if len(info.inputs) != 1 or len(info.inputs[0].dims) != 1:
            raise InvalidInput(
                f"job spec 'explain' needs a model with one feature-vector input; '{info.name}' has "
                f"{[(t.name, list(t.dims)) for t in info.inputs]}"
            )
        spec = info.inputs[0]
        self.input = spec.name
        size = int(spec.dims[0])
        self.names = feature_names(info.metadata, spec.name, size)
        self.target: Target = parse_target(
            option.get("target", 0), [(o.name, list(o.dims)) for o in info.outputs]
        )
        parameters = {k: v for k, v in option.items() if k not in ("method", "top_k", "target")}
        self.plan: MethodPlan = plan_method(
            option.get("method", "feature_ablation"),
            parameters,
            (size,),
            gradients=False,
            max_evaluations=max_perturbations,
        )

    def add(self, table: pa.Table, items: Sequence[Item], inputs: Mapping[str, np.ndarray]) -> pa.Table:
        """``table`` with the attribution columns of ``items`` (rows of ``inputs``), joined on ``index``."""
        rows = np.asarray(inputs[self.input])
        future = asyncio.run_coroutine_threadsafe(self._attribute(rows), self.scorer.loop)
        attributions = future.result(self.scorer.timeout_s)
        position = {item.index: i for i, item in enumerate(items)}
        at = [position[int(index)] for index in table.column("index").to_pylist()]
        for rank in range(self.top_k):
            names: list[str] = []
            values: list[float] = []
            for i in at:
                top = top_features(attributions[i], self.names, self.top_k)
                names.append(top[rank][0] if rank < len(top) else "")
                values.append(top[rank][1] if rank < len(top) else float("nan"))
            table = table.append_column(f"explain_feature_{rank + 1}", pa.array(names, pa.string()))
            table = table.append_column(f"explain_attribution_{rank + 1}", pa.array(values, pa.float64()))
        return table

    async def _attribute(self, rows: np.ndarray) -> list[np.ndarray]:
        async def evaluate(batch: np.ndarray) -> np.ndarray:
            outputs = await self.scorer.score_async({self.input: batch.astype(rows.dtype, copy=False)})
            return self.target.pick(outputs[self.target.output])

        return list(await asyncio.gather(*(run_perturbation(self.plan, row, evaluate) for row in rows)))
