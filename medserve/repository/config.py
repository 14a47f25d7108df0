"""The per-model ``config.yaml`` schema, validated with pydantic.

A repository is ``<repo>/<model>/config.yaml`` plus ``<repo>/<model>/<version>/<artifact>``. When
``max_batch_size`` > 0, tensor ``dims`` exclude the batch dimension (as in Triton). A model whose
version folders are MONAI bundles needs no ``config.yaml``: its configuration is derived from the bundle
and ``config.yaml``, when present, overrides it (see ``medserve.repository.monai_bundle``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medserve.repository.monai_bundle import bundle_model_defaults
from medserve.values.datatypes import DATATYPES
from medserve.values.errors import InvalidConfig
from medserve.values.suggestions import did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str = Field(min_length=1, description="Tensor name as the model and clients know it.")
    datatype: str = Field(description="Open Inference Protocol datatype, e.g. FP32 or BYTES.")
    dims: list[int] = Field(description="Shape without the batch dimension; -1 marks a variable size.")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype '{value}'; expected one of {', '.join(DATATYPES)}")
        return value

    @field_validator("dims")
    @classmethod
    def _valid_dims(cls, value: list[int]) -> list[int]:
        for dim in value:
            if dim < -1 or dim == 0:
                raise ValueError(f"dims must be positive or -1, got {dim}")
        return value


class DynamicBatching(_Strict):
    max_queue_delay_us: int = Field(
        default=0, ge=0, description="Longest a request waits in the queue for others to batch with."
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes dispatched at once when reached."
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("preferred batch sizes must be >= 1")
        return sorted(set(value))


class _LatestPolicy(_Strict):
    num_versions: int = Field(default=1, ge=1)


class _SpecificPolicy(_Strict):
    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Which versions on disk are served: the latest N (default 1), all, or specific ones."""

    latest: _LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: _SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = [n for n in ("latest", "all", "specific") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of latest, all, specific; got {', '.join(chosen)}")
        return self

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        count = self.latest.num_versions if self.latest is not None else 1
        return ordered[-count:]

    def to_triton(self) -> dict[str, Any]:
        if self.all is not None:
            return {"all": {}}
        if self.specific is not None:
            return {"specific": {"versions": list(self.specific.versions)}}
        count = self.latest.num_versions if self.latest is not None else 1
        return {"latest": {"num_versions": count}}


class ModelConfig(_Strict):
    """What ``<repo>/<model>/config.yaml`` may hold."""

    name: str = ""
    runtime: str = Field(default="onnxruntime", description="Engine that runs the model, by name.")
    artifact: str = Field(
        default="model.onnx", description="File name of the artifact in each version folder."
    )
    max_batch_size: int = Field(default=0, ge=0, description="0: the model does not batch.")
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    dynamic_batching: DynamicBatching | None = None
    max_queue_size: int = Field(
        default=1024,
        ge=1,
        description="Most requests waiting in a version's queue (all priority classes together); when "
        "full, a lower-class request is shed for a more urgent one, else the newcomer gets HTTP 503.",
    )
    instance_count: int = Field(default=1, ge=1, le=64)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    objective: Literal["latency", "throughput", "energy", "cost"] | None = Field(
        default=None, description="What placement optimises within the SLO (medserve placement)."
    )
    slo_p99_ms: float | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("slo", "slo_p99_ms"),
        description="p99 latency target in ms (config.yaml key 'slo').",
    )
    devices: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Devices the model may run on (cpu, cuda:0, openvino:GPU.0); checked at load against "
        "this machine; the first is used unless runtime_options names a device.",
    )
    placement: Literal["config", "auto"] = Field(
        default="config",
        description="config: runtime, device, instance_count and max_batch_size as written here. auto: "
        "chosen at load from this model's stored profile (same artifact, same machine) for its objective "
        "and slo, within devices, with up to instance_count instances per accelerator (one on the CPU); "
        "without a current profile, the values written here (the reason is logged and shown in model "
        "metadata).",
    )
    profile_at_load: bool = Field(
        default=False,
        description="With placement auto: profile the model at load when it has no current profile "
        "(slow: every runtime x device x batch size is measured), then place it.",
    )

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip() for name in value]
        if any(not name for name in names):
            raise ValueError("device names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"devices has duplicates: {names}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.profile_at_load and self.placement != "auto":
            raise ValueError("profile_at_load needs placement: auto")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ValueError("dynamic_batching needs max_batch_size > 0")
        if self.dynamic_batching is not None:
            too_big = [s for s in self.dynamic_batching.preferred_batch_sizes if s > self.max_batch_size]
            if too_big:
                raise ValueError(
                    f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
                )
        for kind in ("inputs", "outputs"):
            tensors = getattr(self, kind) or []
            names = [t.name for t in tensors]
            if len(names) != len(set(names)):
                raise ValueError(f"{kind} has duplicate tensor names")
        return self


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        if (found := _model_in(argument)) is not None:
            return found
    return None


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """``unknown key 'max_batch_sise' — did you mean 'max_batch_size'?`` (known keys of its level)."""
    model: type[BaseModel] | None = ModelConfig
    for part in loc[:-1]:
        if isinstance(part, str) and model is not None:
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field is not None else None
    known = list(model.model_fields) if model is not None else []
    return f"unknown key '{_field_path(loc)}'" + did_you_mean(str(loc[-1]), known)


def _problem(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown_key(error["loc"])
    return f"field '{_field_path(error['loc'])}': {error['msg']}"


def _validated(raw: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")  # typos first
        problems = "; ".join(_problem(error) for error in errors)
        raise InvalidConfig(f"{source}: {problems}") from None


def parse_model_config(
    text: str, source: str, model_name: str, defaults: dict[str, Any] | None = None
) -> ModelConfig:
    """Validate YAML text; errors name the file and the field.

    ``defaults`` (a configuration derived from the model folder, e.g. a MONAI bundle's) fill what the
    text leaves out, unless the text names another runtime.
    """
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidConfig(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if raw.get("name") not in (None, model_name):
        raise InvalidConfig(
            f"{source}: field 'name' is '{raw.get('name')}' but the model folder is '{model_name}'"
        )
    if defaults is not None and raw.get("runtime", defaults.get("runtime")) == defaults.get("runtime"):
        metadata = raw.get("metadata", {})
        if isinstance(metadata, dict):
            metadata = {**defaults.get("metadata", {}), **metadata}
        raw = {**defaults, **raw, "metadata": metadata}
    raw["name"] = model_name
    return _validated(raw, source)


def load_model_config(model_dir: Path) -> ModelConfig:
    """``config.yaml``, over the configuration derived from MONAI bundle version folders if any."""
    path = model_dir / "config.yaml"
    defaults = bundle_model_defaults(model_dir) if model_dir.is_dir() else None
    if not path.is_file():
        if defaults is not None:
            return _validated({**defaults, "name": model_dir.name}, f"{model_dir} (derived from its bundle)")
        raise InvalidConfig(f"{path}: missing (every model folder needs a config.yaml)")
    return parse_model_config(path.read_text(encoding="utf-8"), str(path), model_dir.name, defaults)
