"""Vital-sign monitoring: NEWS2 scoring, plausibility and freshness checks, alert hysteresis."""
