"""``medserve examples jobs --out DIR``: synthetic inputs and a ready-to-run spec for each example job.

Writes ``DIR/<workload>.yaml`` beside the data folders; the specs use paths relative to ``DIR``, so
``medserve job run DIR/variant_scoring.yaml`` works from anywhere. The data are synthetic (no patient,
no real compound library, no real hospital), made for demonstrating the example models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def write_example_jobs(out: Path, *, items: int = 20000, seed: int = 0) -> list[Path]:
    """Write the three example jobs' inputs and specs under ``out``; returns the spec paths.

    ``items`` is the size of the variant and compound sets; the hospital series covers three years.
    """
    from medserve.demo.compound_library import write_example_chemistry
    from medserve.demo.hospital_series import write_example_operations
    from medserve.demo.variants import write_example_genomics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = []

    genomics = write_example_genomics(out / "genomics", n=items, seed=seed)
    vcf = next(p for p in genomics if p.name.startswith("variants"))
    reference = next(p for p in genomics if p.suffix == ".fa")
    specs.append(
        _write_spec(
            out / "variant_scoring.yaml",
            {
                "name": "example: score synthetic variant calls",
                "workload": "variant_scoring",
                "source": str(vcf.relative_to(out)),
                "model": "variant_scorer",
                "sink": {"path": "results/variants.scored.vcf.gz", "format": "vcf"},
                "options": {"reference": reference.name},  # relative to the source's folder
                "chunk_size": 16384,
            },
        )
    )

    chemistry = write_example_chemistry(out / "chemistry", items, seed)
    specs.append(
        _write_spec(
            out / "virtual_screening.yaml",
            {
                "name": "example: screen a synthetic library for solubility",
                "workload": "virtual_screening",
                "source": str(chemistry[0].relative_to(out)),
                "model": "solubility_predictor",
                "sink": {"path": "results/screening_hits.csv", "format": "hits", "top_k": 100},
                "chunk_size": 4096,
            },
        )
    )

    operations = write_example_operations(out / "operations", 3 * 365, seed)
    specs.append(
        _write_spec(
            out / "operations_forecast.yaml",
            {
                "name": "example: next week's admissions and bed occupancy",
                "workload": "operations_forecast",
                "source": str(operations[0].relative_to(out)),
                "model": "occupancy_forecaster",
                "sink": {"path": "results/forecast_backtest.parquet"},
                "options": {"origins": "all"},
                "chunk_size": 4096,
            },
        )
    )
    return specs
