"""Replicas sharing one database: who they are, where they answer, whether they serve."""
