"""The ``medserve`` command: one module per command group, gathered by :mod:`medserve.cli.main`."""

from medserve.cli.main import main

__all__ = ["main"]
