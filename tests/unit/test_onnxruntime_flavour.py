"""ONNX Runtime's flavour is a choice at install time: `onnxruntime` (CPU) or `onnxruntime-gpu`.

The two packages write the same ``onnxruntime/`` files; installed together, the last one wins and the
CUDA provider can vanish. So neither is a dependency of medserve itself: each is an extra, and a model
that names the engine on an install without either is refused with the way to install it.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from medserve.runtimes import runtime_class
from medserve.values.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _names(requirements: object) -> set[str]:
    assert isinstance(requirements, list)
    names = set()
    for requirement in requirements:
        name = str(requirement).split(";")[0]
        for mark in "<>=!~[ ":
            name = name.split(mark)[0]
        names.add(name.strip().lower())
    return names


def test_neither_flavour_is_a_dependency_of_medserve_itself() -> None:
    assert not {"onnxruntime", "onnxruntime-gpu"} & _names(_project()["dependencies"])


def test_each_flavour_is_an_extra_of_its_own_and_no_other_extra_pulls_one() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert "onnxruntime" in _names(extras["cpu"]) and "onnxruntime-gpu" not in _names(extras["cpu"])
    assert "onnxruntime-gpu" in _names(extras["gpu"]) and "onnxruntime" not in _names(extras["gpu"])
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert not {"onnxruntime", "onnxruntime-gpu"} & _names(requirements), name


def test_the_install_script_adds_one_flavour_to_every_install() -> None:
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert 'EXTRAS="$EXTRAS,$FLAVOUR"' in script
    assert "pip uninstall --quiet -y onnxruntime onnxruntime-gpu" in script


def test_a_model_on_an_install_without_onnxruntime_is_told_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without it imports
    monkeypatch.delitem(sys.modules, "medserve.runtimes.onnxruntime", raising=False)
    with pytest.raises(ModelLoadError) as raised:
        runtime_class("onnxruntime")
    message = str(raised.value)
    assert "runtime 'onnxruntime' is not installed" in message
    assert "'cpu' or 'gpu' extra" in message and "MEDSERVE_ONNXRUNTIME" in message
