"""Stateful streaming sessions: per-patient sequence state for Triton-style sequence requests."""
