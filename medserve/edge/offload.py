"""Overflow offload: an edge sends the requests its own admission control refuses to its hub.

For the models named in ``edge_offload_models``, a request the edge cannot answer within its deadline
(or whose queue is full) goes to the hub over the edge's link (mutual TLS or the edge's token) as an
Open Inference Protocol request with binary tensors: the same inputs, requested outputs and parameters
(its ``priority`` / ``priority_class`` and ``timeout`` among them), the request id the edge audits it
by (the body's ``id``, else ``X-Request-ID``), and what is left of the client's own deadline as
``Request-Timeout``. The hub schedules, runs and audits it as a
request of the edge's principal; the edge audits the call as answered by ``overflow``, naming the hub
and why it could not answer itself. If the hub refuses or cannot be reached, the client gets the edge's
503 with both reasons.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from medserve.edge.client import HubClient, HubRefused, HubUnreachable
from medserve.values.datatypes import from_raw_bytes, numpy_dtype, raw_bytes
from medserve.values.errors import InvalidInput, Overloaded
from medserve.values.types import InferenceRequest, InferenceResponse, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
#: how long the hub may take when the client gave no deadline of its own
DEFAULT_TIMEOUT_S = 30.0


def encode_request(request: InferenceRequest) -> tuple[bytes, int]:
    """The request as OIP binary tensors: the JSON header, then each input's raw bytes; every output
    asked for in binary. Returns the body and the header's length."""
    inputs, chunks = [], []
    for tensor in request.inputs:
        data = bytes(raw_bytes(tensor.data, tensor.datatype))
        chunks.append(data)
        parameters = {**tensor.parameters, "binary_data_size": len(data)}
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": parameters,
            }
        )
    header: dict[str, Any] = {"inputs": inputs, "parameters": dict(request.parameters)}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {**o.parameters, "binary_data": True}} for o in request.outputs
        ]
    else:
        header["parameters"]["binary_data_output"] = True
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return head + b"".join(chunks), len(head)


def _tensor(raw: dict[str, Any], body: bytes, offset: int) -> tuple[Tensor, int]:
    name, datatype = str(raw["name"]), str(raw["datatype"])
    shape = tuple(int(d) for d in raw["shape"])
    parameters = dict(raw.get("parameters") or {})
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        data = from_raw_bytes(body[offset : offset + int(size)], datatype, shape, name)
        return Tensor(name, datatype, shape, data, parameters), offset + int(size)
    values: Iterable[Any] = raw.get("data", [])
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(values).reshape(-1)]
        array = np.array(items, dtype=object).reshape(shape)
    else:
        array = np.asarray(values, dtype=numpy_dtype(datatype)).reshape(shape)
    return Tensor(name, datatype, shape, array, parameters), offset


def decode_response(body: bytes, header_length: int | None, request: InferenceRequest) -> InferenceResponse:
    """The hub's answer (JSON, or a JSON header followed by binary outputs)."""
    header = orjson.loads(body[:header_length] if header_length is not None else body)
    offset = header_length if header_length is not None else len(body)
    outputs = []
    for raw in header.get("outputs", []):
        tensor, offset = _tensor(raw, body, offset)
        outputs.append(tensor)
    return InferenceResponse(
        model_name=str(header.get("model_name", request.model_name)),
        model_version=str(header.get("model_version", "")),
        id=str(header.get("id", request.id)),
        outputs=outputs,
        parameters=dict(header.get("parameters") or {}),
    )


class HubOverflow:
    """Sends the edge's refused requests for ``models`` to the hub (a core ``Overflow``)."""

    def __init__(self, client: HubClient, models: Iterable[str]) -> None:
        self._client = client
        self._models = frozenset(models)
        self.target = f"hub {client.link.url}"

    def covers(self, model: str) -> bool:
        return model in self._models

    async def infer(
        self, request: InferenceRequest, refused: Overloaded, request_id: str
    ) -> InferenceResponse:
        body, header_length = encode_request(request)
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)}
        if request_id:
            headers["X-Request-ID"] = request_id  # the hub audits it under the id the edge does
        timeout_s = DEFAULT_TIMEOUT_S
        if request.deadline_ns is not None:
            left = (request.deadline_ns - time.perf_counter_ns()) / 1e9
            if left <= 0:
                raise refused
            headers["Request-Timeout"] = f"{left:.3f}"
            timeout_s = left + 1.0
        path = f"/v2/models/{quote(request.model_name, safe='')}"
        if request.model_version:
            path += f"/versions/{quote(request.model_version, safe='')}"
        try:
            reply = await self._client.infer(path + "/infer", body, headers, timeout_s)
        except (HubUnreachable, HubRefused) as exc:
            raise Overloaded(f"{refused}; offload to the hub failed: {exc}", refused.retry_after_s) from None
        if reply.status_code != 200:
            text = reply.text[:300]
            raise Overloaded(
                f"{refused}; the hub answered the offload with HTTP {reply.status_code}: {text}",
                refused.retry_after_s,
            )
        length = reply.headers.get(HEADER_LENGTH)
        try:
            return decode_response(reply.content, int(length) if length else None, request)
        except (InvalidInput, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise Overloaded(
                f"{refused}; the hub's answer could not be read: {exc}", refused.retry_after_s
            ) from None
