"""CUDA shared memory is not supported on this build, and clients are told so: Triton's own clients
(tritonclient, over REST and gRPC) registering a CUDA region get 501 / UNIMPLEMENTED with the reason,
the status calls answer that nothing is registered, and the server metadata does not advertise the
extension (it does advertise system shared memory, the one to use)."""

from __future__ import annotations

import base64

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import RunningServer
from tritonclient.utils import InferenceServerException

REASON = "CUDA shared memory is not supported by this server; use system shared memory"
HANDLE = base64.b64encode(b"\x00" * 64).decode()  # a cudaIpcGetMemHandle, as clients send it


def test_rest_registering_cuda_memory_is_501_with_the_reason(server: RunningServer) -> None:
    base = f"http://{server.http_url}"
    body = {"raw_handle": {"b64": HANDLE}, "device_id": 0, "byte_size": 64}
    reply = httpx.post(f"{base}/v2/cudasharedmemory/region/images/register", json=body, timeout=30)
    assert reply.status_code == 501 and reply.json()["error"] == REASON
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported") as caught:
        client.register_cuda_shared_memory("images", base64.b64decode(HANDLE), 0, 64)
    assert caught.value.status() == "501" and caught.value.message() == REASON
    assert client.get_cuda_shared_memory_status() == []
    missing = httpx.get(f"{base}/v2/cudasharedmemory/region/images/status", timeout=30)
    assert missing.status_code == 400 and "not registered" in missing.json()["error"]
    client.unregister_cuda_shared_memory("images")  # nothing to unregister: no error
    extensions = client.get_server_metadata()["extensions"]
    assert "cuda_shared_memory" not in extensions and "system_shared_memory" in extensions
    client.close()


def test_grpc_registering_cuda_memory_is_unimplemented_with_the_reason(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.register_cuda_shared_memory("images", base64.b64decode(HANDLE), 0, 64)
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert REASON in caught.value.message()
    assert list(client.get_cuda_shared_memory_status().regions) == []
    client.unregister_cuda_shared_memory("images")
    extensions = client.get_server_metadata().extensions
    assert "cuda_shared_memory" not in extensions and "system_shared_memory" in extensions
    client.close()
