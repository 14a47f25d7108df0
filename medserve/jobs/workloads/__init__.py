"""The workloads a job can run, by the name a spec gives in ``workload``; each imported only when used
(so a server without RDKit or cyvcf2 runs the others)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from medserve.jobs.workload import SourceError, Workload
from medserve.values.errors import InvalidInput


@dataclass(frozen=True)
class WorkloadKind:
    name: str
    target: str  # "module:Class"
    default_model: str  # the example model it is built for ("" when the spec must name one)
    needs: str  # what to install when the import fails
    sinks: tuple[str, ...] = ()  # sink formats it writes itself, besides parquet, csv and hits


WORKLOADS: dict[str, WorkloadKind] = {
    kind.name: kind
    for kind in (
        WorkloadKind(
            "variant_scoring",
            "medserve.jobs.workloads.genomics:VariantScoringWorkload",
            "variant_scorer",
            "cyvcf2 and pyfaidx (pip install 'medserve[jobs]')",
            ("vcf",),
        ),
        WorkloadKind(
            "virtual_screening",
            "medserve.jobs.workloads.chemistry:VirtualScreeningWorkload",
            "solubility_predictor",
            "RDKit (pip install 'medserve[jobs]')",
            ("sdf",),
        ),
        WorkloadKind(
            "operations_forecast",
            "medserve.jobs.workloads.operations:OccupancyForecastWorkload",
            "occupancy_forecaster",
            "pyarrow",
        ),
        WorkloadKind("dicom_studies", "medserve.jobs.workloads.dicom:DicomStudiesWorkload", "", "pydicom"),
        WorkloadKind("table", "medserve.jobs.workloads.table:TableWorkload", "", "pyarrow"),
    )
}


def workload_kind(name: str) -> WorkloadKind:
    kind = WORKLOADS.get(name)
    if kind is None:
        raise InvalidInput(f"unknown workload '{name}'; expected one of {', '.join(WORKLOADS)}")
    return kind


def open_workload(name: str, source: Path, options: dict[str, object]) -> Workload:
    """Construct workload ``name`` over ``source``; ``InvalidInput`` when the source cannot be read,
    the options are wrong, or the workload's libraries are missing."""
    kind = workload_kind(name)
    module_name, _, class_name = kind.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"workload '{name}' needs {kind.needs}: {exc}") from None
    if not source.exists():
        raise InvalidInput(f"source {source} does not exist")
    try:
        workload: Workload = getattr(module, class_name)(source, options)
    except SourceError as exc:
        raise InvalidInput(f"source {source}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"workload '{name}' options: {exc}") from None
    except OSError as exc:
        raise InvalidInput(f"source {source} cannot be read: {exc.strerror or exc}") from None
    return workload
