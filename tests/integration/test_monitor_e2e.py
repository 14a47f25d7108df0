"""The patient monitor end to end: tritonclient.grpc streams with Triton sequence parameters, and the
WebSocket door, against a real ``medserve serve``."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from conftest import RunningServer
from websockets.sync.client import connect

from medserve.streaming.messages import VITAL_FIELDS

VITALS_STABLE = [16, 97, 0, 125, 72, 0, 36.8]
VITALS_SICK = [27, 90, 0, 92, 128, 0, 39.2]


def sample_inputs(seq: int, vitals: list[float]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, datatype, data in (
        ("SAMPLE_SEQ", "INT64", np.array([seq], np.int64)),
        ("TIMESTAMP", "FP64", np.array([time.time()], np.float64)),
        ("VITALS", "FP32", np.array(vitals, np.float32)),
    ):
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def stream(server: RunningServer) -> tuple[grpcclient.InferenceServerClient, queue.Queue[Any]]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    replies: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put(error or result))
    return client, replies


def send(client: grpcclient.InferenceServerClient, seq: int, vitals: list[float], **sequence: Any) -> None:
    client.async_stream_infer("patient_monitor", sample_inputs(seq, vitals), sequence_id=11, **sequence)


def test_grpc_stream_with_sequence_parameters_and_resume(server: RunningServer) -> None:
    client, replies = stream(server)
    verdicts, alerts = [], []
    for seq in range(8):
        send(client, seq, VITALS_STABLE if seq < 3 else VITALS_SICK, sequence_start=seq == 0)
        reply = replies.get(timeout=30)
        assert not isinstance(reply, Exception), reply
        verdicts.append(reply.as_numpy("VERDICT")[0])
        alerts += [json.loads(a) for a in reply.as_numpy("ALERTS")]
        assert reply.as_numpy("NEWS2")[-1] >= 0
    client.stop_stream()  # the connection drops
    client, replies = stream(server)  # reconnect, start again, resend the last two samples
    for seq in (6, 7, 8):
        send(client, seq, VITALS_SICK, sequence_start=seq == 6, sequence_end=seq == 8)
        verdicts.append(replies.get(timeout=30).as_numpy("VERDICT")[0])
    client.stop_stream()
    assert verdicts == [b"accepted"] * 8 + [b"duplicate", b"duplicate", b"accepted"]
    assert [a["kind"] for a in alerts] == ["raised"]
    assert alerts[0]["observation"]["valueInteger"] >= 7
    listed = httpx.get(f"http://{server.http_url}/v2/alerts", params={"sequence_id": "11"}).json()
    assert any(a["id"] == alerts[0]["id"] for a in listed)
    ack = httpx.post(
        f"http://{server.http_url}/v2/alerts/{alerts[0]['id']}/acknowledge", json={"by": "nurse-1"}
    )
    assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "nurse-1"
    metrics = httpx.get(f"http://{server.http_url}/metrics").text
    assert 'medserve_monitor_samples_total{verdict="duplicate"}' in metrics
    assert 'medserve_monitor_alerts_total{kind="raised"}' in metrics
    assert "medserve_monitor_open_streams" in metrics


def test_grpc_stream_errors_keep_the_stream_open(server: RunningServer) -> None:
    client, replies = stream(server)
    client.async_stream_infer("patient_monitor", sample_inputs(0, VITALS_STABLE), sequence_id=12)
    error = replies.get(timeout=30)
    assert isinstance(error, Exception) and "not open" in str(error)
    client.async_stream_infer(
        "patient_monitor",
        sample_inputs(0, [16, 130, 0, 125, 72, 0, 36.8]),
        sequence_id=12,
        sequence_start=True,
    )
    error = replies.get(timeout=30)
    assert isinstance(error, Exception) and "spo2" in str(error)
    client.async_stream_infer(
        "patient_monitor", sample_inputs(0, VITALS_STABLE), sequence_id=12, sequence_start=True
    )
    reply = replies.get(timeout=30)
    assert not isinstance(reply, Exception) and reply.as_numpy("VERDICT")[0] == b"accepted"
    client.stop_stream()


def test_websocket_door(server: RunningServer) -> None:
    with connect(f"ws://{server.http_url}/v2/monitor/stream") as socket:
        vitals = dict(
            zip(
                VITAL_FIELDS,
                [16, 97, False, 125, 72, "A", 36.8],
            )
        )
        socket.send(
            json.dumps(
                {
                    "sequence_id": "ws-1",
                    "sequence_start": True,
                    "sample_seq": 0,
                    "timestamp": time.time(),
                    "vitals": vitals,
                }
            )
        )
        reply = json.loads(socket.recv(timeout=30))
        assert reply["verdict"] == "accepted" and reply["news2"]["total"] == 0
        socket.send("{not json")
        assert "error" in json.loads(socket.recv(timeout=30))
        socket.send(
            json.dumps(
                {"sequence_id": "ws-1", "sample_seq": 1, "timestamp": time.time(), "vitals": {"spo2": -3}}
            )
        )
        assert "spo2" in json.loads(socket.recv(timeout=30))["error"]
        socket.send(
            json.dumps(
                {"sequence_id": "ws-1", "sample_seq": 1, "timestamp": time.time(), "vitals": {"pulse": 80}}
            )
        )
        assert json.loads(socket.recv(timeout=30))["verdict"] == "accepted"


def test_monitor_metadata(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready("patient_monitor")
    meta = client.get_model_metadata("patient_monitor", as_json=True)
    assert {i["name"] for i in meta["inputs"]} == {"SAMPLE_SEQ", "TIMESTAMP", "VITALS", "ECG"}
