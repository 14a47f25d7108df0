"""Model monitoring: windowed input and output statistics and drift against a reference."""

from medserve.monitoring.drift import DriftScore, ModelMonitor, drift_level

__all__ = ["DriftScore", "ModelMonitor", "drift_level"]
