"""Cumulative per-version inference statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from medserve.scheduling.batcher import ExecutionTimes


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class _BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStatistics:
    """Counters of one model version; updated on the event loop thread only."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, _BatchStats] = field(default_factory=dict)

    def request_succeeded(
        self, batch_size: int, request_ns: int, queue_ns: int, execution: ExecutionTimes
    ) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += batch_size
        self.success.add(request_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(execution.input_ns)
        self.compute_infer.add(execution.infer_ns)
        self.compute_output.add(execution.output_ns)

    def request_failed(self, request_ns: int) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.fail.add(request_ns)

    def executed(self, execution: ExecutionTimes) -> None:
        self.execution_count += 1
        stats = self.batches.setdefault(execution.batch_size, _BatchStats())
        stats.compute_input.add(execution.input_ns)
        stats.compute_infer.add(execution.infer_ns)
        stats.compute_output.add(execution.output_ns)

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": Duration().to_dict(),
                "cache_miss": Duration().to_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stats.compute_input.to_dict(),
                    "compute_infer": stats.compute_infer.to_dict(),
                    "compute_output": stats.compute_output.to_dict(),
                }
                for size, stats in sorted(self.batches.items())
            ],
        }
