"""The job spec's ``explain`` option: attribution columns in an offline job's results, checked against
feature ablation computed directly on the model file with onnxruntime; a wrong option is refused."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest

from medserve.clinical.genomics.variant_features import FEATURE_NAMES
from medserve.jobs.spec import load_spec, parse_spec
from medserve.jobs.standalone import run_standalone
from medserve.settings import load_settings
from medserve.values.errors import InvalidInput

ROWS = 12


def test_explain_option_adds_the_top_features_of_each_row(example_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    values = np.round(rng.uniform(0.5, 60.0, size=(ROWS, 25)), 3).astype(np.float32)
    with (tmp_path / "features.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *(f"f{i}" for i in range(25))])
        for r in range(ROWS):
            writer.writerow([f"v{r}", *values[r]])
    (tmp_path / "spec.yaml").write_text(
        "workload: table\nsource: features.csv\nmodel: variant_scorer\nsink: {path: out.parquet}\n"
        "chunk_size: 5\noptions:\n"
        f"  inputs: {{features: [{', '.join(f'f{i}' for i in range(25))}]}}\n"
        "  keep: [id]\n"
        "explain: {method: feature_ablation, top_k: 2}\n"
    )
    settings = load_settings(None, data_dir=tmp_path / "data", repository=example_repository)
    _, state = run_standalone(
        settings, load_spec(tmp_path / "spec.yaml"), out=io.StringIO(), install_signals=False
    )
    assert state == "succeeded"
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["index"] == list(range(ROWS))
    session = onnxruntime.InferenceSession(
        str(example_repository / "variant_scorer" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = list(FEATURE_NAMES)
    for r in range(ROWS):
        x = values[r]
        ablated = np.repeat(x[None], 26, axis=0)
        ablated[np.arange(1, 26), np.arange(25)] = 0.0
        scores = session.run(None, {"features": ablated})[0][:, 0].astype(np.float64)
        drops = scores[0] - scores[1:]
        order = np.argsort(-np.abs(drops), kind="stable")
        assert table["explain_feature_1"][r] == names[order[0]]
        assert table["explain_feature_2"][r] == names[order[1]]
        assert table["explain_attribution_1"][r] == pytest.approx(drops[order[0]], abs=1e-5)


def test_a_wrong_explain_option_is_refused_naming_it() -> None:
    base = {"workload": "table", "source": "x.csv", "sink": {"path": "o.parquet"}}
    with pytest.raises(InvalidInput, match="explain.method"):
        parse_spec({**base, "explain": {"method": "grad_cam"}})
    with pytest.raises(InvalidInput, match="explain.top_k"):
        parse_spec({**base, "explain": {"top_k": 0}})
    # a spec without the option keeps the digest it had before the option existed
    assert "explain" not in parse_spec(base).document()
