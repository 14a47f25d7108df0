"""Overflow: where a request goes when this server refuses it for lack of capacity.

A server may name an :class:`Overflow` for some of its models (an edge forwards to its hub,
``medserve/edge/offload.py``). When the model's admission control refuses a request because it
cannot be answered within its deadline, or the queue is full (:class:`Overloaded`), the request is
sent there instead, with its priority parameters and what is left of its deadline, and the answer
comes from there. The call is audited here as usual, naming where it was answered
(``device`` ``overflow``, the reason in ``detail``); the other server audits it too.
"""

from __future__ import annotations

from typing import Protocol

from medserve.core.model import ServedModel
from medserve.values.errors import Overloaded
from medserve.values.types import InferenceRequest, InferenceResponse


class Overflow(Protocol):
    #: where requests go, for the audit record and the logs (e.g. the hub's URL)
    target: str

    def covers(self, model: str) -> bool:
        """Whether requests for ``model`` may be sent away."""
        ...

    async def infer(
        self, request: InferenceRequest, refused: Overloaded, request_id: str
    ) -> InferenceResponse:
        """Answer ``request`` elsewhere under ``request_id`` (the id this server audits it by); raise
        :class:`Overloaded` (naming both refusals) if that fails too."""
        ...


async def infer_or_overflow(
    model: ServedModel,
    request: InferenceRequest,
    overflow: Overflow | None,
    facts: dict[str, str],
    request_id: str,
) -> InferenceResponse:
    """Run ``request`` on ``model``; when its admission refuses it and ``overflow`` covers the model,
    answer it there instead and say so in ``facts`` (the audit record's device and detail)."""
    try:
        return await model.infer(request, facts)
    except Overloaded as refused:
        if overflow is None or not overflow.covers(model.name):
            raise
        facts.update(device="overflow", detail=f"offloaded to {overflow.target}: {refused}"[:500])
        return await overflow.infer(request, refused, request.id or request_id)
