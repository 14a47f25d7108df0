"""Packaging hook: generate the gRPC message code from the .proto while building.

Metadata lives in pyproject.toml. This file only adds a ``build_py`` step that runs
``medserve/protocol/build_proto.py`` (grpcio-tools comes from ``[build-system] requires``):

* ``pip install .`` / wheel builds: the messages are generated into the build folder, so the wheel
  ships ``medserve/protocol/_generated/``;
* ``pip install -e .``: they are generated into the source tree (gitignored), where the editable
  install imports them from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATED = Path("medserve", "protocol", "_generated")


def _build_proto() -> ModuleType:
    # Loaded by path: importing the medserve package here would need its runtime dependencies.
    path = ROOT / "medserve" / "protocol" / "build_proto.py"
    spec = importlib.util.spec_from_file_location("_medserve_build_proto", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProto(build_py):
    """``build_py`` that also generates the gRPC message modules."""

    def run(self) -> None:
        super().run()
        generator = _build_proto()
        if self.editable_mode:
            generator.generate()
        else:
            generator.generate(force=True, out_dir=Path(self.build_lib) / GENERATED)


setup(
    cmdclass={"build_py": BuildPyWithProto},
    package_data={"medserve.protocol": ["proto/*.proto"]},
)
