"""Model monitoring: windowed input and output statistics and drift against a reference."""

from medserve.monitoring.drift import ModelMonitor
from medserve.monitoring.scores import DriftScore, drift_level

__all__ = ["DriftScore", "ModelMonitor", "drift_level"]
