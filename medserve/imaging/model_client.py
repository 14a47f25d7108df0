"""How an imaging pipeline, running in a worker thread, reaches models: through ``InferenceService`` on
the event loop that owns them, one request per image or sliding-window patch, so that the dynamic
batcher merges them into batches. The run as a whole is one audited call (``series_runner``); its
steps are ``InferenceService.infer_step`` calls, authorised for the pipeline's caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.core.service import InferenceService
from medserve.values.access import Caller
from medserve.values.errors import InvalidInput
from medserve.values.types import InferenceRequest, Tensor

#: Requests a pipeline keeps in flight at once: enough to fill the largest batches.
IN_FLIGHT = 32


@dataclass
class ModelInfo:
    name: str
    version: str
    digest: str
    device: str
    metadata: dict[str, Any]
    input_name: str
    output_name: str


@dataclass
class ModelClient:
    """Runs models for one pipeline execution; records which version served (for the audit record)."""

    service: InferenceService
    caller: Caller
    loop: asyncio.AbstractEventLoop
    used: dict[str, ModelInfo] = field(default_factory=dict)
    timeout_s: float = 600.0

    def info(self, model: str) -> ModelInfo:
        served = self.service.model_info(model, self.caller)
        if not served.inputs or not served.outputs:
            raise InvalidInput(f"model '{model}' declares no inputs or outputs")
        info = ModelInfo(
            served.name,
            served.version,
            served.sha256,
            served.device,
            served.metadata,
            served.inputs[0].name,
            served.outputs[0].name,
        )
        self.used[model] = info
        return info

    def infer_each(
        self, model: str, items: Sequence[np.ndarray], priority_class: str = "bulk"
    ) -> list[np.ndarray]:
        """Run ``model`` on every item (one batch item each, float32, without the batch axis), in
        ``priority_class`` (default ``bulk``: interactive requests go first; no deadline)."""
        info = self.info(model)
        future = asyncio.run_coroutine_threadsafe(self._infer_each(info, items, priority_class), self.loop)
        return future.result(self.timeout_s)

    async def _infer_each(
        self, info: ModelInfo, items: Sequence[np.ndarray], priority_class: str
    ) -> list[np.ndarray]:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(k: int, item: np.ndarray) -> np.ndarray:
            data = np.ascontiguousarray(item, dtype=np.float32)[None]
            request = InferenceRequest(
                info.name,
                info.version,
                id=f"item-{k}",
                inputs=[Tensor(info.input_name, "FP32", tuple(data.shape), data)],
                parameters={"priority_class": priority_class},
            )
            async with gate:
                response = await self.service.infer_step(request, self.caller)
            output = next((t for t in response.outputs if t.name == info.output_name), response.outputs[0])
            result: np.ndarray = output.data[0]
            return result

        return list(await asyncio.gather(*(one(k, item) for k, item in enumerate(items))))
