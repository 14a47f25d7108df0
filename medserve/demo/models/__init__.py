"""Example models built by our own code (no downloads): see :mod:`medserve.demo.models.repository`."""
