"""The example model of chemistry built from scratch (torch; seconds to a minute)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import yaml
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from medserve.clinical.chemistry.drug_likeness import drug_likeness
from medserve.clinical.chemistry.fingerprints import MorganFingerprinter
from medserve.clinical.chemistry.solubility import esol_log_solubility
from medserve.demo.compound_library import (
    synthetic_library,
    write_example_chemistry,
)
from medserve.demo.models import solubility_predictor
from medserve.demo.models.config_file import write_config
from medserve.jobs.workload import Item, ItemFailure
from medserve.jobs.workloads.chemistry import DESCRIPTOR_COLUMNS, VirtualScreeningWorkload
from medserve.repository.config import load_model_config


@pytest.fixture(scope="session")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("repository") / solubility_predictor.NAME
    (folder / "1").mkdir(parents=True)
    metrics = solubility_predictor.export_solubility_predictor(folder / "1" / "model.onnx")
    write_config(folder / "config.yaml", solubility_predictor.SOLUBILITY_PREDICTOR)
    return folder, metrics


@pytest.mark.slow
def test_solubility_predictor_builds_and_beats_the_mean(built_model: tuple[Path, dict[str, float]]) -> None:
    folder, metrics = built_model
    assert metrics["r2"] >= 0.85 and metrics["held_out_compounds"] > 500
    assert metrics["rmse"] < 0.5 * metrics["mean_predictor_rmse"]
    config = load_model_config(folder)
    assert config.max_batch_size == 4096 and config.runtime == "onnxruntime"
    assert [(t.name, t.datatype, t.dims) for t in config.inputs or []] == [("fingerprint", "UINT8", [2048])]
    assert [(t.name, t.datatype, t.dims) for t in config.outputs or []] == [("log_s", "FP32", [1])]
    raw = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert raw["metadata"]["research_use"] is True and "synthetic" in raw["metadata"]["description"]
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch
    # Fresh compounds of another seed: the model follows ESOL far better than a constant does.
    molecules = [Chem.MolFromSmiles(c.smiles) for c in synthetic_library(400, seed=4242)]
    truth = np.array([esol_log_solubility(m) for m in molecules])
    (predicted,) = session.run(["log_s"], {"fingerprint": MorganFingerprinter()(molecules)})
    assert predicted.shape == (400, 1)
    r2 = 1 - np.sum((predicted[:, 0] - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert r2 > 0.85, r2


@pytest.mark.slow
def test_virtual_screening_end_to_end(built_model: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    folder, _ = built_model
    (path,) = write_example_chemistry(tmp_path, 300, 5)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("C1CC bad-ring\nc1ccccc1 benzene\n")
    workload = VirtualScreeningWorkload(path, {})
    assert workload.kind == "virtual_screening" and workload.rank_by == ("log_s", True)
    items, failures = split(workload)
    assert len(items) == 301 and [(f.index, f.locator) for f in failures] == [(300, "line 302")]
    assert [(i.index, i.locator) for i in split(workload)[0]] == [(i.index, i.locator) for i in items]

    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    parts: list[pa.Table] = []
    for start in range(0, len(items), 128):
        chunk = items[start : start + 128]
        inputs, kept, unusable = workload.featurise(chunk)
        assert kept == chunk and unusable == [] and inputs["fingerprint"].shape == (len(chunk), 2048)
        parts.append(workload.rows(kept, dict(zip(["log_s"], session.run(["log_s"], inputs), strict=True))))
    table = pa.concat_tables(parts)
    assert table.column_names == ["index", "id", "smiles", "log_s", *(name for name, _ in DESCRIPTOR_COLUMNS)]
    assert table["index"].to_pylist() == [i.index for i in items]
    assert (
        table["id"].to_pylist()[:2] == ["MS-000001", "MS-000002"] and table["id"].to_pylist()[-1] == "benzene"
    )
    # Predictions are the model's own outputs on RDKit's fingerprints of the canonical SMILES.
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    smiles = table["smiles"].to_pylist()
    reference = np.stack([generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles]).astype(
        np.uint8
    )
    (expected,) = session.run(["log_s"], {"fingerprint": reference})
    np.testing.assert_allclose(table["log_s"].to_numpy(), expected[:, 0], rtol=1e-5, atol=1e-5)
    truth = np.array([esol_log_solubility(Chem.MolFromSmiles(s)) for s in smiles])
    assert np.corrcoef(truth, table["log_s"].to_numpy())[0, 1] > 0.9
    first = drug_likeness(Chem.MolFromSmiles(smiles[0]))
    row = table.slice(0, 1).to_pylist()[0]
    assert row["hbd"] == first.hbd and row["lipinski_pass"] == first.lipinski_pass
    assert row["molecular_weight"] == pytest.approx(first.molecular_weight, rel=1e-6)

    # The sdf sink: the 10 most soluble compounds, ranked, readable by RDKit.
    sink = tmp_path / "hits.sdf"
    assert workload.write_sink(iter(parts), "vcf", sink, {}) is False
    assert workload.write_sink(iter(parts), "sdf", sink, {"top_k": 10}) is True
    hits = list(Chem.SDMolSupplier(str(sink)))
    order = np.lexsort((table["index"].to_numpy(), -table["log_s"].to_numpy()))[:10]
    assert [h.GetProp("_Name") for h in hits] == [table["id"][int(k)].as_py() for k in order]
    assert [int(h.GetProp("rank")) for h in hits] == list(range(1, 11))
    assert [float(h.GetProp("log_s")) for h in hits] == pytest.approx(
        [table["log_s"][int(k)].as_py() for k in order], abs=1e-4
    )
    assert [Chem.MolToSmiles(h) for h in hits] == [table["smiles"][int(k)].as_py() for k in order]


def split(workload: VirtualScreeningWorkload) -> tuple[list[Item], list[ItemFailure]]:
    entries = list(workload.items())
    return [e for e in entries if isinstance(e, Item)], [e for e in entries if isinstance(e, ItemFailure)]
