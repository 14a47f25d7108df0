"""Ordered shutdown: on SIGTERM the server stops taking work, finishes what it accepted, exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from conftest import start_server


def test_sigterm_drains_in_flight_requests(example_repository: Path, tmp_path: Path) -> None:
    running = start_server(example_repository, tmp_path / "server.log")

    def one(seed: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(running.http_url, network_timeout=120)
        tensor = httpclient.InferInput("image", [4, 1, 224, 224], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(seed).random((4, 1, 224, 224), dtype=np.float32))
        result: np.ndarray = client.infer("chest_xray_classifier", [tensor]).as_numpy("probabilities")
        return result

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(one, seed) for seed in range(3)]
            time.sleep(0.5)  # requests are in the server: queued or running
            running.process.send_signal(signal.SIGTERM)
            outputs = [f.result(timeout=120) for f in futures]
        assert all(o.shape == (4, 14) for o in outputs)
        assert running.process.wait(60) == 0, running.output()
        assert "medserve stopped" in running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()
