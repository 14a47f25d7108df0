"""The example model of genomics built from scratch (torch; seconds to a minute)."""

from __future__ import annotations

from pathlib import Path

import cyvcf2
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import yaml

from medserve.clinical.genomics.variant_features import FEATURE_COUNT
from medserve.demo.models import variant_scorer
from medserve.demo.models.config_file import write_config
from medserve.demo.variants import (
    write_synthetic_calls,
)
from medserve.jobs.workload import Item, ItemFailure
from medserve.jobs.workloads.genomics import VariantScoringWorkload


@pytest.fixture(scope="session")
def scorer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models") / variant_scorer.NAME
    (root / "1").mkdir(parents=True)
    write_config(root / "config.yaml", variant_scorer.VARIANT_SCORER)
    variant_scorer.VARIANT_SCORER.write(1, root / "1" / "model.onnx")
    return root


@pytest.mark.slow
def test_example_model_separates_true_variants_from_artefacts(scorer_model: Path) -> None:
    config = yaml.safe_load((scorer_model / "config.yaml").read_text(encoding="utf-8"))
    assert config["runtime"] == "onnxruntime" and config["max_batch_size"] >= 1024
    assert config["inputs"] == [{"name": "features", "datatype": "FP32", "dims": [FEATURE_COUNT]}]
    assert config["outputs"] == [{"name": "score", "datatype": "FP32", "dims": [1]}]
    metadata = config["metadata"]
    assert metadata["research_use"] is True and "synthetic" in metadata["description"].lower()
    assert metadata["held_out_auc"]["value"] >= variant_scorer.MIN_HELD_OUT_AUC
    model = scorer_model / "1" / "model.onnx"
    auc = variant_scorer.held_out_auc(model, seed=777, n=2000)
    assert auc >= variant_scorer.MIN_HELD_OUT_AUC
    x, y = variant_scorer.labelled_variants(2000, 778, no_context_fraction=1.0)  # jobs without a reference
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {"features": x})
    assert scores.shape == (len(y), 1) and np.all((scores >= 0) & (scores <= 1))
    assert variant_scorer.roc_auc(scores[:, 0], y) >= variant_scorer.MIN_HELD_OUT_AUC
    assert variant_scorer.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


@pytest.mark.slow
def test_workload_end_to_end_with_onnxruntime(tmp_path: Path, scorer_model: Path) -> None:
    reference, _, calls, truth_path = write_synthetic_calls(tmp_path, 400, seed=5)
    lines = calls.read_text(encoding="utf-8").splitlines(keepends=True)
    first_record = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines.insert(first_record + 10, "chr1\tnot-a-position\t.\tA\tG\t1\tPASS\t.\tGT\t0/1\n")
    calls.write_text("".join(lines), encoding="utf-8")
    workload = VariantScoringWorkload(calls, {"reference": str(reference)})
    entries = list(workload.items())
    assert entries == list(workload.items())  # deterministic: the runner may start again
    assert [e.index for e in entries] == list(range(len(entries)))
    failed = [e for e in entries if isinstance(e, ItemFailure)]
    assert len(failed) == 1 and failed[0].locator == f"line {first_record + 11}"
    assert "POS 'not-a-position'" in failed[0].reason
    assert failed[0].index == sum(isinstance(e, Item) for e in entries[: failed[0].index])
    session = ort.InferenceSession(str(scorer_model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    parts: list[pa.Table] = []
    items = [e for e in entries if isinstance(e, Item)]
    for start in range(0, len(items), 128):  # chunks, as the runner sends them
        inputs, kept, failures = workload.featurise(items[start : start + 128])
        assert failures == [] and inputs["features"].shape == (len(kept), FEATURE_COUNT)
        parts.append(workload.rows(kept, {"score": session.run(["score"], inputs)[0]}))
    results = pa.concat_tables(parts)
    assert results.column_names == ["index", "chrom", "pos", "id", "ref", "alt", "score"]
    assert results.num_rows == len(items) and workload.rank_by == ("score", True)
    truth = np.array([line.split("\t")[4] == "1" for line in truth_path.read_text().splitlines()[1:]])
    scores = results.column("score").to_numpy()
    assert variant_scorer.roc_auc(scores, truth) > 0.9
    sink = tmp_path / "scored.vcf.gz"
    assert workload.write_sink(iter(parts), "vcf", sink, {})
    annotated = [v.INFO.get("MEDSERVE_SCORE") for v in cyvcf2.VCF(str(sink))]
    flat = [s for value in annotated for s in (value if isinstance(value, tuple) else (value,))]
    assert flat == pytest.approx(scores.tolist(), rel=1e-5)
