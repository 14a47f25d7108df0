"""A Triton model configuration (JSON, as Triton's repository extension loads it with
``parameters.config``) applied over a model's ``config.yaml``.

Model-analyzer and other Triton tools load a model with its whole configuration as JSON, changed where
they experiment: ``max_batch_size``, ``dynamic_batching`` and ``instance_group``. Those map onto
medserve's configuration; the fields that describe what the model is (``name``, ``platform``,
``backend``, ``input``, ``output``, ...) must agree with it or be absent; any other field is refused by
name, so an override never silently does less than it says.
"""

from __future__ import annotations

import re
from typing import Any

from medserve.repository.config import DynamicBatching, ModelConfig
from medserve.values.errors import InvalidConfig

#: Fields that describe the model, not how it is served: accepted, not applied.
DESCRIPTIVE = frozenset(
    {
        "name",
        "platform",
        "backend",
        "runtime",
        "input",
        "output",
        "version_policy",
        "default_model_filename",
        "parameters",
        "model_warmup",
        "optimization",
        "batch_input",
        "batch_output",
        "cc_model_filenames",
        "metric_tags",
        "model_transaction_policy",
        "response_cache",
    }
)
#: Fields applied to the configuration.
APPLIED = frozenset({"max_batch_size", "dynamic_batching", "instance_group"})


def apply_triton_config(base: ModelConfig, override: dict[str, Any]) -> ModelConfig:
    """``base`` with what ``override`` (Triton's ModelConfig as JSON) changes; InvalidConfig naming the
    field that cannot be applied. Keys may be in protobuf's JSON spelling (``maxBatchSize``) or Triton's
    (``max_batch_size``), as Triton's own parser takes both."""
    override = _snake_keys(override)
    unknown = sorted(set(override) - DESCRIPTIVE - APPLIED)
    if unknown:
        raise InvalidConfig(
            f"config override: field(s) {', '.join(unknown)} cannot be applied by medserve "
            f"(it applies {', '.join(sorted(APPLIED))})"
        )
    if override.get("name", base.name) not in ("", base.name):
        raise InvalidConfig(f"config override: 'name' is '{override['name']}' but the model is '{base.name}'")
    changes: dict[str, Any] = {}
    if "max_batch_size" in override:
        changes["max_batch_size"] = _int(override["max_batch_size"], "max_batch_size")
    if "dynamic_batching" in override:
        changes["dynamic_batching"] = _dynamic_batching(override["dynamic_batching"])
    if "instance_group" in override:
        changes["instance_count"] = _instance_count(override["instance_group"])
    if changes.get("max_batch_size") == 0:
        changes["dynamic_batching"] = None
    try:
        return ModelConfig.model_validate({**base.model_dump(), **changes})
    except ValueError as exc:
        raise InvalidConfig(f"config override of '{base.name}': {exc}") from None


def _snake_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", str(k)).lower(): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(item) for item in value]
    return value


def _int(value: Any, field: str) -> int:
    if isinstance(value, str) and value.isdigit():  # protobuf's JSON writes 64-bit integers as strings
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidConfig(f"config override: '{field}' must be a non-negative integer, got {value!r:.40}")
    return value


def _dynamic_batching(value: Any) -> DynamicBatching | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidConfig("config override: 'dynamic_batching' must be an object")
    sizes = value.get("preferred_batch_size", [])
    if not isinstance(sizes, list):
        raise InvalidConfig("config override: 'dynamic_batching.preferred_batch_size' must be a list")
    return DynamicBatching(
        max_queue_delay_us=_int(value.get("max_queue_delay_microseconds", 0), "max_queue_delay_microseconds"),
        preferred_batch_sizes=[_int(s, "preferred_batch_size") for s in sizes],
    )


def _instance_count(groups: Any) -> int:
    if not isinstance(groups, list) or not groups:
        raise InvalidConfig("config override: 'instance_group' must be a non-empty list")
    total = 0
    for group in groups:
        if not isinstance(group, dict):
            raise InvalidConfig("config override: each 'instance_group' entry must be an object")
        total += _int(group.get("count", 1), "instance_group.count")
    return max(total, 1)
