"""What an example model is: its repository configuration and how to write each version's ONNX file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPSET = 17
"""The default ONNX opset of the example graphs."""

IR_VERSION = 8
"""ONNX IR version of the hand-built graphs (IR 8 pairs with opset 17; read by older runtimes too)."""

ModelWriter = Callable[[int, Path], None]
"""Writes the ONNX model of one version (first argument) to the given ``model.onnx`` path."""


@dataclass(frozen=True)
class ExampleModel:
    """An example model: its ``config.yaml`` content and a writer for each version's ``model.onnx``."""

    name: str
    config: Mapping[str, Any]
    write: ModelWriter
    versions: tuple[int, ...] = (1,)
    trained: bool = False
    """Whether ``write`` trains a network (seconds to minutes, with torch) rather than assembling a graph."""
