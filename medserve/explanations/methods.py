"""Methods by name: their parameters checked and completed, the evaluations they will take, and running
the model-agnostic ones over an evaluator.

=========================  ==========================================================================
``occlusion``              window / stride / baseline (:mod:`.occlusion`); on images a 16-element
                           window by default, on feature vectors single features
``feature_ablation``       occlusion with single elements (window 1)
``integrated_gradients``   baseline / steps / rule; with Captum on a torch model (``implementation``
                           ``auto`` or ``captum``), else by finite differences (``window``, ``epsilon``)
``grad_cam``               ``layer`` (default: the last convolution); torch models only
=========================  ==========================================================================

Every fault is an ``InvalidInput`` naming the parameter (a door answers 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.explanations.integrated_gradients import RULES, fd_ig_count, path_integrated_gradients
from medserve.explanations.occlusion import occlusion, occlusion_count
from medserve.explanations.perturbation import Evaluate, normalise_window
from medserve.values.errors import InvalidInput

METHODS = ("occlusion", "feature_ablation", "integrated_gradients", "grad_cam")
IMPLEMENTATIONS = ("auto", "captum", "finite_differences")
DEFAULT_IMAGE_WINDOW = 16

#: Parameters each method reads (beyond ``method`` and ``target``).
KEYS: dict[str, frozenset[str]] = {
    "occlusion": frozenset({"window", "stride", "baseline", "batch_size"}),
    "feature_ablation": frozenset({"baseline", "batch_size"}),
    "integrated_gradients": frozenset(
        {"baseline", "steps", "rule", "window", "epsilon", "batch_size", "implementation"}
    ),
    "grad_cam": frozenset({"layer"}),
}
ALL_KEYS = frozenset().union(*KEYS.values())


@dataclass(frozen=True)
class MethodPlan:
    """A method ready to run: ``implementation`` ``perturbation`` (through an evaluator) or ``captum``
    (through a torch module); ``parameters``: every parameter it will use, defaults filled in (echoed
    in the answer); ``evaluations``: the model evaluations it takes (Captum: forward-backward passes)."""

    method: str
    implementation: str
    parameters: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0


def _integer(parameters: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"parameter '{name}' must be an integer from {low} to {high}, got {value!r}")
    return value


def _window_value(value: object, name: str) -> int | list[int] | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise InvalidInput(f"parameter '{name}' must be an integer or a list of integers, got {value!r}")


def _baseline_value(value: object, size: int) -> float | list[float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)] if _numbers(value) else []
    raise InvalidInput(f"parameter 'baseline' must be a number or a list of {size} numbers, got {value!r}")


def _numbers(value: object) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput("parameter 'baseline' must hold numbers only") from None
    return True


def plan_method(
    method: object,
    parameters: Mapping[str, Any],
    shape: Sequence[int],
    *,
    gradients: bool,
    max_evaluations: int,
) -> MethodPlan:
    """Check ``parameters`` for ``method`` on one input of ``shape`` (no batch dimension).

    ``gradients``: the model is a torch module Captum can differentiate. ``max_evaluations``: the cap
    (setting ``explain_max_perturbations``); a method that would take more is refused, naming the count.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidInput(f"parameter 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    misplaced = sorted(k for k in parameters if k in ALL_KEYS and k not in KEYS[method])
    if misplaced:
        raise InvalidInput(
            f"parameter(s) {misplaced} do not apply to method '{method}' (it reads {sorted(KEYS[method])})"
        )
    size = int(np.prod(shape)) if len(shape) else 1
    batch_size = _integer(parameters, "batch_size", 64, 1, 4096)
    if method in ("occlusion", "feature_ablation"):
        default_window: int | None = None if len(shape) <= 1 else DEFAULT_IMAGE_WINDOW
        raw = (
            _window_value(parameters.get("window", default_window), "window") if method == "occlusion" else 1
        )
        window = normalise_window(raw, shape)
        stride_raw = _window_value(parameters.get("stride"), "stride")
        stride = normalise_window(stride_raw, shape, "stride") if stride_raw is not None else window
        used: dict[str, Any] = {
            "window": list(window),
            "stride": list(stride),
            "baseline": _baseline_value(parameters.get("baseline", 0.0), size),
            "batch_size": batch_size,
        }
        count = occlusion_count(shape, window, stride)
        plan = MethodPlan(method, "perturbation", used, count)
    elif method == "integrated_gradients":
        implementation = parameters.get("implementation", "auto")
        if implementation not in IMPLEMENTATIONS:
            raise InvalidInput(
                f"parameter 'implementation' must be one of {', '.join(IMPLEMENTATIONS)}, "
                f"got {implementation!r}"
            )
        if implementation == "captum" and not gradients:
            raise InvalidInput(
                "implementation 'captum' needs a torch model; this model has no gradients here"
            )
        use_captum = gradients and implementation != "finite_differences"
        rule = parameters.get("rule", "riemann_trapezoid")
        if rule not in RULES:
            raise InvalidInput(f"parameter 'rule' must be one of {', '.join(RULES)}, got {rule!r}")
        used = {
            "baseline": _baseline_value(parameters.get("baseline", 0.0), size),
            "steps": _integer(parameters, "steps", 32 if use_captum else 16, 2, 10_000),
            "rule": rule,
            "batch_size": batch_size,
        }
        if use_captum:
            for key in ("window", "epsilon"):
                if key in parameters:
                    raise InvalidInput(
                        f"parameter '{key}' applies to implementation 'finite_differences' only"
                    )
            plan = MethodPlan(method, "captum", used, used["steps"])
        else:
            window = normalise_window(_window_value(parameters.get("window"), "window"), shape)
            epsilon = parameters.get("epsilon", 1e-3)
            if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon <= 0.1:
                raise InvalidInput(f"parameter 'epsilon' must be a number in (0, 0.1], got {epsilon!r}")
            used |= {"window": list(window), "epsilon": float(epsilon)}
            plan = MethodPlan(method, "finite_differences", used, fd_ig_count(shape, window, used["steps"]))
    else:
        if not gradients:
            raise InvalidInput(
                "method 'grad_cam' needs a torch model (gradients); use occlusion or integrated_gradients"
            )
        layer = parameters.get("layer")
        if layer is not None and not isinstance(layer, str):
            raise InvalidInput(f"parameter 'layer' must be a layer name, got {layer!r}")
        plan = MethodPlan(method, "captum", {"layer": layer}, 1)
    if plan.evaluations > max_evaluations:
        raise InvalidInput(
            f"method '{method}' with {plan.parameters} takes {plan.evaluations} model evaluations on "
            f"an input of shape {list(shape)}; the limit is {max_evaluations} "
            "(setting explain_max_perturbations): use a larger window or stride, or fewer steps"
        )
    return plan


async def run_perturbation(plan: MethodPlan, x: np.ndarray, evaluate: Evaluate) -> np.ndarray:
    """Run a ``perturbation`` or ``finite_differences`` plan over ``evaluate``."""
    p = plan.parameters
    if plan.method in ("occlusion", "feature_ablation"):
        return await occlusion(
            x,
            evaluate,
            window=p["window"],
            stride=p["stride"],
            baseline=p["baseline"],
            batch_size=p["batch_size"],
        )
    if plan.implementation == "finite_differences":
        return await path_integrated_gradients(
            x,
            evaluate,
            baseline=p["baseline"],
            steps=p["steps"],
            rule=p["rule"],
            window=p["window"],
            epsilon=p["epsilon"],
            batch_size=p["batch_size"],
        )
    raise ValueError(f"plan {plan.method}/{plan.implementation} does not run through an evaluator")
