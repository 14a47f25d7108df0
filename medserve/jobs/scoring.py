"""How a job reaches its model: through the core (``InferenceService.infer``), from the job's worker
thread onto the event loop that owns the model, in the job's priority class (the lowest by default,
so real-time traffic keeps its deadlines), a few batches in flight to keep the engine busy. Across
models, the registry's device arbiter (:mod:`medserve.scheduling.arbiter`) holds a job batch back while
another model on the device has more urgent work.

Each batch is one Open Inference Protocol request and so one audit record (door ``job:<id>``, with
input and output digests), exactly as if a client had sent it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Future

import numpy as np

from medserve.core.service import InferenceService
from medserve.values.access import Caller
from medserve.values.datatypes import datatype_of
from medserve.values.digest import tensors_digest
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceRequest, Tensor

#: Batches a job keeps in flight: one running, one waiting, so the engine never idles between them.
IN_FLIGHT = 2


def default_batch_size(service: InferenceService, caller: Caller, model: str, version: str = "") -> int:
    """The model's ``max_batch_size`` (1 for a model without batching)."""
    return max(1, service.model_info(model, caller, version).max_batch_size)


class CoreScorer:
    """Scores a chunk with ``model`` through ``service`` on ``loop`` (called from another thread)."""

    def __init__(
        self,
        service: InferenceService,
        loop: asyncio.AbstractEventLoop,
        caller: Caller,
        model: str,
        *,
        version: str = "",
        batch_size: int,
        priority_class: str,
        timeout_s: float = 3600.0,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput("batch_size must be at least 1")
        self.service = service
        self.loop = loop
        self.caller = caller
        self.model = model
        self.version = version
        self.batch_size = batch_size
        self.priority_class = priority_class
        self.timeout_s = timeout_s
        self._requests = 0

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        """Start scoring a chunk (from a worker thread); the future gives its outputs. The requests
        and their audit digests are made here, off the event loop, so hashing large batches never
        stalls real-time traffic, and while the previous chunk runs."""
        return asyncio.run_coroutine_threadsafe(self._run(self.requests(inputs)), self.loop)

    def score(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.submit(inputs).result(self.timeout_s)

    async def score_async(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._run(self.requests(inputs))

    def requests(self, inputs: Mapping[str, np.ndarray]) -> list[tuple[InferenceRequest, str | None]]:
        """The chunk as requests of at most ``batch_size`` rows, each with its input digest."""
        rows = {len(array) for array in inputs.values()}
        if len(rows) != 1:
            raise InvalidInput(f"the workload's inputs differ in length: {sorted(rows)}")
        total = rows.pop()
        requests = []
        for start in range(0, total, self.batch_size):
            self._requests += 1
            tensors = []
            for name, array in inputs.items():
                part = np.ascontiguousarray(array[start : start + self.batch_size])
                tensors.append(Tensor(name, datatype_of(part), tuple(part.shape), part))
            request = InferenceRequest(
                self.model,
                self.version,
                id=f"{self.caller.request_id}-{self._requests}",
                inputs=tensors,
                parameters={"priority_class": self.priority_class},
            )
            audited = self.service.audit is not None
            requests.append((request, tensors_digest(tensors) if audited else None))
        return requests

    async def _run(self, requests: list[tuple[InferenceRequest, str | None]]) -> dict[str, np.ndarray]:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(request: InferenceRequest, digest: str | None) -> dict[str, np.ndarray]:
            async with gate:
                response = await self.service.infer(request, self.caller, input_digest=digest)
            return {tensor.name: tensor.data for tensor in response.outputs}

        results = await asyncio.gather(*(one(request, digest) for request, digest in requests))
        if not results:
            return {}
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}
