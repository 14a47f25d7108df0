"""The gRPC door's message limit (``grpc_max_message_bytes``) with tritonclient: an oversize message fails
that request with RESOURCE_EXHAUSTED, a ModelStreamInfer stream stays open for the next message, and
past twice the limit gRPC itself ends the call."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, start_server, stop_server

LIMIT = 1 << 20  # 1 MiB: gRPC lets through up to 2 MiB, medserve serves up to 1 MiB


@pytest.fixture(scope="module")
def small_limit_server(
    example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("grpc-limit")
    shutil.copytree(example_repository / "identity_fp32", root / "repository" / "identity_fp32")
    env = {"MEDSERVE_GRPC_MAX_MESSAGE_BYTES": str(LIMIT)}
    running = start_server(root / "repository", root / "server.log", env=env)
    yield running
    stop_server(running)


def _inputs(elements: int) -> list[grpcclient.InferInput]:
    data = np.arange(elements, dtype=np.float32).reshape(1, elements)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def test_an_oversize_stream_message_fails_alone_and_the_stream_stays_open(
    small_limit_server: RunningServer,
) -> None:
    client = grpcclient.InferenceServerClient(small_limit_server.grpc_url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        oversize = (LIMIT + LIMIT // 2) // 4  # 1.5 MiB of FP32: past medserve's limit, within gRPC's
        client.async_stream_infer("identity_fp32", _inputs(oversize), request_id="big")
        result, error = answers.get(timeout=30)
        assert result is None and error is not None
        assert "gRPC message limit of 1048576 bytes" in str(error), str(error)
        for i in range(3):  # the same stream answers the next messages
            client.async_stream_infer("identity_fp32", _inputs(1000 + i), request_id=f"ok-{i}")
            result, error = answers.get(timeout=30)
            assert error is None, str(error)
            assert result.get_response().id == f"ok-{i}"
            np.testing.assert_array_equal(
                result.as_numpy("OUTPUT0")[0], np.arange(1000 + i, dtype=np.float32)
            )
    finally:
        client.stop_stream()
    small_limit_server.assert_alive()


def test_an_oversize_unary_message_is_resource_exhausted(small_limit_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(small_limit_server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("identity_fp32", _inputs((LIMIT + LIMIT // 2) // 4))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "grpc_max_message_bytes" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:  # past twice the limit: gRPC's own refusal
        client.infer("identity_fp32", _inputs(3 * LIMIT // 4))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    served = client.infer("identity_fp32", _inputs(LIMIT // 8))  # 512 KiB: served
    assert served.as_numpy("OUTPUT0").shape == (1, LIMIT // 8)
