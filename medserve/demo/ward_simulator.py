"""A simulated ward streaming to ``patient_monitor`` over gRPC, measuring alerts and latency.

Every bed is one Triton sequence (``sequence_id`` = bed number) on its own ``ModelStreamInfer``
stream, all driven by one asyncio loop (``tritonclient.grpc.aio``), so hundreds of beds cost no
threads. A bed sends one sample per simulated second: ``SAMPLE_SEQ``, ``TIMESTAMP`` (the wall-clock
send time) and ``VITALS``; every second sample also carries the 500 ECG samples of the last 2 s.
``speed`` simulated seconds pass per wall second. Replies are matched to samples by request id (or
in order when a reply has none); their ``ALERTS`` are compared with the ward's ground truth.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medserve.demo.ward_trajectories import ECG_CHUNK_SECONDS, PatientTrajectory, build_ward
from medserve.streaming.messages import MONITOR_MODEL, VITAL_FIELDS
from medserve.values.errors import MedserveError, PermissionDenied, Unauthenticated

_BEDS_PER_CHANNEL = 64
_DRAIN_TIMEOUT_S = 10.0


class WardUnreachable(MedserveError):
    """The server did not answer before the run started."""


@dataclass
class BedOutcome:
    bed: int
    deterioration: str  # "" for a stable patient
    onset_s: float | None
    truth_s: float | None  # first simulated second with NEWS2 >= 5
    first_alert_s: float | None  # simulated time of the sample whose reply carried the first alert
    first_alert_kind: str
    alerts: int
    outcome: str  # detected | missed | not_reached | false_alert | quiet
    detection_delay_s: float | None = None


@dataclass
class WardReport:
    url: str
    beds: int
    minutes: float
    speed: float
    seed: int
    deteriorating: float
    samples_sent: int
    replies: int
    errors: int
    lost: int
    alerts_by_kind: dict[str, int]
    detected: int
    missed: int
    not_reached: int
    false_alert_beds: int
    alert_latency_ms: dict[str, float | None]
    round_trip_ms: dict[str, float | None]
    requested_rate_hz: float
    achieved_rate_hz: float
    wall_s: float
    error_examples: list[str] = field(default_factory=list)
    bed_outcomes: list[BedOutcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Stats:
    sent: int = 0
    replies: int = 0
    errors: int = 0
    first_send: float = math.inf
    last_send: float = 0.0
    round_trips: list[float] = field(default_factory=list)
    alert_latencies: list[float] = field(default_factory=list)
    alerts: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5 and message not in self.error_examples:
            self.error_examples.append(message)


@dataclass
class _BedLog:
    alerts: list[tuple[float, str]] = field(default_factory=list)  # (simulated time, kind)
    lost: int = 0


def _percentiles(values: list[float], names: dict[str, float]) -> dict[str, float | None]:
    if not values:
        return {name: None for name in names}
    array = np.asarray(values) * 1000.0
    return {name: round(float(np.percentile(array, q)), 3) for name, q in names.items()}


def _request(grpc: Any, bed: int, seq: int, last: bool, patient: PatientTrajectory, ecg: Any) -> Any:
    """One sample as a ``stream_infer`` request dict."""
    seq_input = grpc.InferInput("SAMPLE_SEQ", [1], "INT64")
    seq_input.set_data_from_numpy(np.array([seq], dtype=np.int64))
    vitals = patient.vitals_at(float(seq))
    vitals_input = grpc.InferInput("VITALS", [len(VITAL_FIELDS)], "FP32")
    vitals_input.set_data_from_numpy(np.array([vitals[f] for f in VITAL_FIELDS], dtype=np.float32))
    inputs = [seq_input, vitals_input]
    if seq > 0 and seq % ECG_CHUNK_SECONDS == 0:
        chunk = ecg.next_chunk()
        ecg_input = grpc.InferInput("ECG", [chunk.size], "FP32")
        ecg_input.set_data_from_numpy(chunk)
        inputs.append(ecg_input)
    stamp = grpc.InferInput("TIMESTAMP", [1], "FP64")
    stamp.set_data_from_numpy(np.array([time.time()], dtype=np.float64))
    inputs.insert(1, stamp)
    return {
        "model_name": MONITOR_MODEL,
        "inputs": inputs,
        "request_id": f"{bed}:{seq}",
        "sequence_id": bed,
        "sequence_start": seq == 0,
        "sequence_end": last,
    }


def _alerts_of(result: Any) -> list[dict[str, Any]]:
    raw = result.as_numpy("ALERTS")
    if raw is None:
        return []
    alerts = []
    for item in np.asarray(raw).reshape(-1):
        text = item.decode() if isinstance(item, bytes) else str(item)
        doc = json.loads(text)
        if isinstance(doc, dict):
            alerts.append(doc)
    return alerts


async def _run_bed(
    grpc: Any,
    client: Any,
    patient: PatientTrajectory,
    samples: int,
    speed: float,
    start: float,
    stats: _Stats,
    headers: dict[str, str] | None = None,
) -> _BedLog:
    log = _BedLog()
    pending: OrderedDict[str, tuple[int, float]] = OrderedDict()  # request id -> (seq, send time)
    sending_done = asyncio.Event()
    ecg = patient.ecg_stream()

    async def requests() -> Any:
        for seq in range(samples):
            delay = start + seq / speed - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = _request(grpc, patient.bed, seq, seq == samples - 1, patient, ecg)
            sent_at = time.perf_counter()
            pending[request["request_id"]] = (seq, sent_at)
            stats.sent += 1
            stats.first_send = min(stats.first_send, sent_at)
            stats.last_send = max(stats.last_send, sent_at)
            if seq == samples - 1:
                sending_done.set()
            yield request

    stream = client.stream_infer(requests(), headers=headers)

    async def consume() -> None:
        async for result, error in stream:
            now = time.perf_counter()
            request_id = result.get_response().id if result is not None else ""
            entry = pending.pop(request_id, None)
            if entry is None and pending:
                entry = pending.popitem(last=False)[1]
            stats.replies += 1
            if entry is not None:
                stats.round_trips.append(now - entry[1])
            if error is not None:
                stats.error(str(error))
            elif entry is not None:
                for alert in _alerts_of(result):
                    kind = str(alert.get("kind", "?"))
                    stats.alerts[kind] += 1
                    stats.alert_latencies.append(now - entry[1])
                    log.alerts.append((float(entry[0]), kind))
            if sending_done.is_set() and not pending:
                return

    task = asyncio.ensure_future(consume())
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=samples / speed + 5 + _DRAIN_TIMEOUT_S)
    except TimeoutError:
        stats.error(f"bed {patient.bed}: no reply to {len(pending)} sample(s) within the drain timeout")
    except Exception as exc:  # the stream failed: counted and reported, not swallowed
        stats.error(f"bed {patient.bed}: stream failed: {exc}")
    finally:
        task.cancel()
        stream.cancel()
    log.lost = len(pending)
    return log


def _outcome(patient: PatientTrajectory, truth: float | None, log: _BedLog) -> BedOutcome:
    raising = [(t, kind) for t, kind in log.alerts if kind != "cleared"]
    first_s, first_kind = raising[0] if raising else (None, "")
    deterioration = patient.deterioration
    delay = None
    if deterioration is None:
        outcome = "false_alert" if raising else "quiet"
    else:
        after = [t for t, _ in raising if t >= deterioration.onset_s]
        if after:
            outcome = "detected"
            delay = after[0] - truth if truth is not None else None
        else:
            outcome = "missed" if truth is not None else "not_reached"
    return BedOutcome(
        bed=patient.bed,
        deterioration=deterioration.kind if deterioration else "",
        onset_s=round(deterioration.onset_s, 1) if deterioration else None,
        truth_s=truth,
        first_alert_s=first_s,
        first_alert_kind=first_kind,
        alerts=len(log.alerts),
        outcome=outcome,
        detection_delay_s=delay,
    )


async def _check_access(client: Any, headers: dict[str, str] | None) -> None:
    """Ask for ``patient_monitor``'s readiness with the run's token before streaming a whole ward: a
    missing, unknown or ungranted token ends the run at once with the server's reason."""
    from tritonclient.utils import InferenceServerException

    try:
        ready = await client.is_model_ready(MONITOR_MODEL, headers=headers)
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        if "UNAUTHENTICATED" in status:
            raise Unauthenticated(
                f"the server refused the token ({exc.message()}): pass --token or set MEDSERVE_TOKEN"
            ) from None
        if "PERMISSION_DENIED" in status:
            raise PermissionDenied(
                f"the token has no grant for {MONITOR_MODEL} ({exc.message()}): create one with "
                f"`medserve tokens create --role service --models {MONITOR_MODEL}`"
            ) from None
        raise WardUnreachable(f"{MONITOR_MODEL}: {exc.message()}") from exc
    if not ready:
        raise WardUnreachable(f"{MONITOR_MODEL} is not ready on the server")


async def _run_ward(
    url: str, beds: int, minutes: float, speed: float, seed: int, deteriorating: float, token: str
) -> WardReport:
    import tritonclient.grpc as grpc
    from tritonclient.grpc.aio import InferenceServerClient

    samples = max(1, round(minutes * 60))
    ward = build_ward(beds, float(samples), seed, deteriorating)
    truth = ward.truth()
    clients = [InferenceServerClient(url) for _ in range(math.ceil(beds / _BEDS_PER_CHANNEL))]
    try:
        try:
            live = await clients[0].is_server_live()
        except Exception as exc:  # any failure to reach the server ends the run before it starts
            raise WardUnreachable(f"no Open Inference Protocol gRPC server at {url}: {exc}") from exc
        if not live:
            raise WardUnreachable(f"the server at {url} is not live")
        headers = {"authorization": f"Bearer {token}"} if token else None
        await _check_access(clients[0], headers)
        stats = _Stats()
        start = time.perf_counter() + 0.2
        tasks = [
            _run_bed(
                grpc,
                clients[i % len(clients)],
                patient,
                samples,
                speed,
                start + (i / beds) / speed,  # spread the beds over one sample interval
                stats,
                headers,
            )
            for i, patient in enumerate(ward.patients)
        ]
        logs = await asyncio.gather(*tasks)
        wall_s = time.perf_counter() - start
    finally:
        for client in clients:
            await client.close()
    outcomes = [_outcome(p, truth.get(p.bed), log) for p, log in zip(ward.patients, logs)]
    counts = Counter(o.outcome for o in outcomes)
    span = stats.last_send - stats.first_send
    return WardReport(
        url=url,
        beds=beds,
        minutes=minutes,
        speed=speed,
        seed=seed,
        deteriorating=deteriorating,
        samples_sent=stats.sent,
        replies=stats.replies,
        errors=stats.errors,
        lost=sum(log.lost for log in logs),
        alerts_by_kind=dict(sorted(stats.alerts.items())),
        detected=counts["detected"],
        missed=counts["missed"],
        not_reached=counts["not_reached"],
        false_alert_beds=counts["false_alert"],
        alert_latency_ms=_percentiles(stats.alert_latencies, {"p50": 50, "p95": 95, "p99": 99, "max": 100}),
        round_trip_ms=_percentiles(stats.round_trips, {"p50": 50, "p99": 99}),
        requested_rate_hz=round(beds * speed, 3),
        achieved_rate_hz=round((stats.sent - beds) / span, 3) if span > 0 else 0.0,
        wall_s=round(wall_s, 3),
        error_examples=stats.error_examples,
        bed_outcomes=outcomes,
    )


def run_ward(
    url: str,
    beds: int,
    minutes: float,
    speed: float = 1.0,
    seed: int = 0,
    deteriorating: float = 0.2,
    token: str = "",
) -> WardReport:
    """Stream a simulated ward of ``beds`` patients for ``minutes`` simulated minutes to the
    ``patient_monitor`` model at the gRPC address ``url`` and report what came back."""
    if beds < 1:
        raise ValueError(f"beds must be at least 1, got {beds}")
    if not minutes > 0 or not speed > 0:
        raise ValueError("minutes and speed must be positive")
    return asyncio.run(_run_ward(url, beds, minutes, speed, seed, deteriorating, token))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_report(report: WardReport) -> str:
    """The report as a readable table."""
    lat, rtt = report.alert_latency_ms, report.round_trip_ms
    lines = [
        f"ward: {report.beds} beds, {report.minutes:g} simulated min at {report.speed:g}x, seed {report.seed}"
        f" -> {report.url} ({report.wall_s:.1f} s wall)",
        f"samples sent {report.samples_sent}  replies {report.replies}  errors {report.errors}"
        f"  lost {report.lost}",
        f"sample rate  {report.achieved_rate_hz:.1f}/s achieved, {report.requested_rate_hz:.1f}/s requested",
        f"round trip   p50 {_ms(rtt['p50'])} ms  p99 {_ms(rtt['p99'])} ms",
        f"alert latency p50 {_ms(lat['p50'])} ms  p95 {_ms(lat['p95'])} ms  p99 {_ms(lat['p99'])} ms"
        f"  max {_ms(lat['max'])} ms",
        "alerts       " + ("  ".join(f"{k} {v}" for k, v in report.alerts_by_kind.items()) or "none"),
        f"outcome      detected {report.detected}  missed {report.missed}  not reached {report.not_reached}"
        f"  false alerts on stable beds {report.false_alert_beds}",
    ]
    lines += [f"error        {message}" for message in report.error_examples]
    shown = [o for o in report.bed_outcomes if o.deterioration or o.outcome != "quiet"]
    if shown:
        lines.append("")
        header = ("BED", "DETERIORATION", "ONSET s", "NEWS2>=5 s", "1st ALERT s", "KIND", "ALERTS", "OUTCOME")
        rows = [
            (
                str(o.bed),
                o.deterioration or "stable",
                _s(o.onset_s),
                _s(o.truth_s),
                _s(o.first_alert_s),
                o.first_alert_kind or "-",
                str(o.alerts),
                o.outcome,
            )
            for o in shown
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
