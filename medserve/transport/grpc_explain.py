"""gRPC door of explanations: ``ModelExplain`` beside ``ModelInfer`` on ``inference.GRPCInferenceService``.

Its messages are ``ModelInferRequest`` and ``ModelInferResponse`` (no new message types: any OIP
client's generated code can call it, e.g. ``channel.unary_unary("/inference.GRPCInferenceService/
ModelExplain", ...)``). A separate RPC rather than an ``explain`` parameter on ModelInfer: an
explanation answers a different tensor (attributions, not the model's outputs), runs in the lowest
priority class for seconds rather than milliseconds, and is audited as its own event; on ModelInfer one
flag would change all three for a client, a proxy or a metric that only sees the method name.

Request parameters are scalars in gRPC: a list or an object (``target``, ``window``, ``baseline``)
is sent as its JSON text. Answer parameters that are not scalars come back as JSON text too.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import grpc

from medserve.explanations.service import Explainer, parameters_of
from medserve.logs import bind_request
from medserve.protocol import grpc_codec
from medserve.protocol.grpc_messages import SERVICE_NAME, pb
from medserve.transport.grpc import GrpcInferenceServicer, _guarded, _serialize, client_deadline_ns
from medserve.values import errors
from medserve.values.access import Action

if TYPE_CHECKING:
    from medserve.values.types import InferenceResponse

METHOD = "ModelExplain"


def explain_handler(servicer: GrpcInferenceServicer, explainer: Explainer) -> grpc.GenericRpcHandler:
    """The ``ModelExplain`` handler, registered under the inference service's wire name."""
    service = servicer._service

    async def model_explain(
        request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        arrived = time.perf_counter_ns()
        caller = await servicer._caller(context)
        bind_request(caller.request_id, caller.principal.name)
        try:
            caller.principal.require(Action.INFER, request.model_name)  # before the tensors are decoded
            inference = grpc_codec.decode_infer_request(request, servicer.max_message_bytes)
            inference.parameters = parameters_of(inference.parameters)
        except errors.MedserveError as exc:
            await service.refuse(caller, request.model_name, exc)
            raise
        inference.deadline_ns = client_deadline_ns(context, arrived)
        result = await explainer.explain(inference, caller)
        context.set_trailing_metadata((("x-request-id", result.id),))
        return grpc_codec.encode_infer_response(_scalar_parameters(result))

    handler = grpc.unary_unary_rpc_method_handler(
        _guarded(model_explain, pb.ModelInferRequest, servicer.max_message_bytes, service.record),
        response_serializer=_serialize,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: handler})


def _scalar_parameters(response: InferenceResponse) -> InferenceResponse:
    """Answer parameters as gRPC can carry them: lists and objects as JSON text."""
    response.parameters = {
        key: json.dumps(value) if isinstance(value, list | dict | tuple) else value
        for key, value in response.parameters.items()
    }
    return response
