"""Checks a job spec before it is accepted, the same for every door (REST, CLI, stand-alone): the
workload exists, its source can be read, the sink format is one it can write, the model exists."""

from __future__ import annotations

from collections.abc import Callable

from medserve.jobs.spec import GENERIC_SINKS, JobSpec
from medserve.jobs.workload import Workload
from medserve.jobs.workloads import open_workload, workload_kind
from medserve.values.errors import InvalidInput


def prepare(spec: JobSpec, model_exists: Callable[[str], None]) -> tuple[JobSpec, Workload]:
    """The spec with its model filled in, and its workload opened over the source.

    ``model_exists`` raises (``ModelNotFound``) for a model the server does not have. Every problem
    is an ``InvalidInput`` (or ``ModelNotFound``) whose message says what to fix.
    """
    kind = workload_kind(spec.workload)
    model = spec.model or kind.default_model
    sink_format = spec.sink.resolved_format()
    if sink_format not in GENERIC_SINKS and sink_format not in kind.sinks:
        offered = ", ".join((*GENERIC_SINKS, *kind.sinks))
        raise InvalidInput(
            f"workload '{spec.workload}' cannot write sink format '{sink_format}'; use {offered}"
        )
    if spec.sink.path.exists() and spec.sink.path.is_dir():
        raise InvalidInput(f"sink {spec.sink.path} is a folder; give a file path")
    if model:
        model_exists(model)
    workload = open_workload(spec.workload, spec.source, spec.options)
    pipeline_models: tuple[str, ...] | None = getattr(workload, "models", None)
    if not model:
        if pipeline_models is None:
            raise InvalidInput(f"workload '{spec.workload}' needs the spec to name a model")
        for name in pipeline_models:  # a pipeline workload's models come from its configuration
            model_exists(name)
    if sink_format == "hits" and spec.sink.rank_by is None and workload.rank_by is None:
        raise InvalidInput(f"workload '{spec.workload}' has no default ranking: set sink.rank_by")
    return spec.model_copy(update={"model": model}), workload


def models_of(spec: JobSpec, workload: Workload) -> list[str]:
    """The models a prepared job calls: the spec's, or a pipeline workload's."""
    return [spec.model] if spec.model else list(getattr(workload, "models", ()))
