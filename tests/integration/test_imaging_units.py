"""The imaging workflow's parts without a server: instance store, configuration, multipart parsing and
the export outbox (on SQLite and, when configured, PostgreSQL)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import cast

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.series_to_volume import series_to_volume
from medserve.demo import dicom_studies as synthetic
from medserve.imaging import instance_store as states
from medserve.imaging.config import load_config
from medserve.imaging.destinations import Destination, ExportFailed, ExportItem
from medserve.imaging.instance_store import InstanceStore, NotDicom, parse_instance
from medserve.imaging.model_client import ModelClient, ModelInfo
from medserve.imaging.outbox import FAILED, PENDING, SENT, Outbox
from medserve.imaging.pipelines import PipelineSpec, segment_3d
from medserve.store.database import Database
from medserve.store.tables import DicomSeriesRow, ExportRow, ImagingResultRow
from medserve.transport.dicomweb import iter_parts
from medserve.values.errors import InvalidConfig, InvalidInput


def _ct_bytes(**changes: object) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_parse_instance_refuses_what_is_not_usable_dicom() -> None:
    with pytest.raises(NotDicom, match="only 5 bytes"):
        parse_instance(b"hello")
    with pytest.raises(NotDicom, match="not a DICOM Part-10 file"):
        parse_instance(b"x" * 500)
    good = _ct_bytes()
    with pytest.raises(NotDicom, match="truncated"):
        parse_instance(good[: len(good) - 1000])
    assert parse_instance(good).Modality == "CT"


def test_store_writes_then_records_and_counts_a_resent_instance_once(
    migrated_database: Database, tmp_path: Path
) -> None:
    store = InstanceStore(migrated_database, tmp_path / "dicom")
    data = _ct_bytes()
    first = store.store(data)
    again = store.store(data)
    assert not first.duplicate and again.duplicate
    path = tmp_path / "dicom" / first.study_uid / first.series_uid / f"{first.sop_uid}.dcm"
    assert path.read_bytes() == data
    assert not list(path.parent.glob(".*"))  # no temporary files left behind
    with migrated_database.session() as session:
        row = session.get(DicomSeriesRow, first.series_uid)
        assert row is not None and row.instances == 1 and row.state == states.RECEIVING
        assert row.attributes["Modality"] == "CT"
    assert store.instance_paths(first.series_uid) == [path]


def test_store_refuses_uids_that_would_escape_the_store(migrated_database: Database, tmp_path: Path) -> None:
    store = InstanceStore(migrated_database, tmp_path / "dicom")
    for bad in ("../../etc", "1.2.abc", "1." * 40):
        with pytest.raises(NotDicom, match="SeriesInstanceUID"):
            store.store(_ct_bytes(SeriesInstanceUID=bad))
    assert not any((tmp_path / "dicom").rglob("*.dcm"))


def test_a_late_instance_sends_a_processed_series_round_again(
    migrated_database: Database, tmp_path: Path
) -> None:
    store = InstanceStore(migrated_database, tmp_path / "dicom")
    stored = store.store(_ct_bytes())
    with migrated_database.session() as session, session.begin():
        row = session.get(DicomSeriesRow, stored.series_uid)
        assert row is not None
        row.state = states.DONE
    store.store(_ct_bytes(SOPInstanceUID=pydicom.uid.generate_uid()))
    with migrated_database.session() as session:
        row = session.get(DicomSeriesRow, stored.series_uid)
        assert row is not None and row.state == states.RECEIVING and row.instances == 2
        assert "after the series was done" in row.reason


def test_imaging_config_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "imaging.yaml"
    path.write_text("pipelines:\n  a: {kind: detection, model: m}\n")
    with pytest.raises(InvalidConfig, match="unknown pipeline kind 'detection'"):
        load_config(path, tmp_path)
    path.write_text(
        "pipelines:\n  a: {kind: segmentation_3d, model: m}\nroutes:\n  - {name: r, pipeline: b}\n"
    )
    with pytest.raises(InvalidConfig, match="route 'r' names pipeline 'b'"):
        load_config(path, tmp_path)
    path.write_text("- not a mapping\n")
    with pytest.raises(InvalidConfig, match="mapping"):
        load_config(path, tmp_path)
    default = load_config(None, tmp_path)
    assert default.destinations == [{"name": "folder", "type": "folder", "path": str(tmp_path / "exports")}]


def test_multipart_parts_and_malformed_bodies() -> None:
    body = (
        b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n"
        b"--b1\r\nContent-Type: application/dicom\r\n\r\nTW\r\nO\r\n--b1--\r\n"
    )
    parts = list(iter_parts(body, b"b1"))
    assert [content for _, content in parts] == [b"ONE", b"TW\r\nO"]
    assert parts[0][0]["content-type"] == "application/dicom"
    with pytest.raises(InvalidInput, match="does not contain its boundary"):
        list(iter_parts(b"nothing here", b"b1"))
    with pytest.raises(InvalidInput, match="ends inside a part"):
        list(iter_parts(b"--b1\r\nContent-Type: application/dicom\r\n\r\nONE", b"b1"))


class _Recorder(Destination):
    kind = "test"
    accepted = frozenset({"dicom", "fhir"})

    def __init__(self, name: str, failures: list[ExportFailed]) -> None:
        super().__init__(name)
        self.failures = failures
        self.sent: list[str] = []

    def _send(self, item: ExportItem) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(item.uid)
        return "ok"


def _result(database: Database, outbox: Outbox, kind: str = "sr") -> str:
    from datetime import UTC, datetime

    (outbox.results_root / f"{kind}.dcm").write_bytes(b"result")

    with database.session() as session, session.begin():
        row = ImagingResultRow(
            id=f"r{kind}",
            series_uid="1.2.3",
            study_uid="1.2",
            kind=kind,
            uid="1.2.3.4" if kind != "fhir" else "bundle-1",
            path=f"{kind}.dcm",
            model="m",
            model_version="1",
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.add_all(outbox.rows_for(row))
    return row.id


def _states(database: Database) -> dict[str, tuple[str, int, str]]:
    with database.session() as session:
        rows = session.scalars(select(ExportRow)).all()
        return {r.destination: (r.state, r.attempts, r.last_error) for r in rows}


async def _until(check: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_outbox_retries_then_sends_once_and_parks_refusals(
    migrated_database: Database, tmp_path: Path
) -> None:
    flaky = _Recorder("flaky", [ExportFailed("down", True), ExportFailed("still down", True)])
    refusing = _Recorder("refusing", [ExportFailed("400 invalid", False)])
    outbox = Outbox(migrated_database, tmp_path, [flaky, refusing], backoff_s=0.05, poll_s=0.02)
    _result(migrated_database, outbox)
    outbox.start()
    try:
        await _until(lambda: _states(migrated_database)["flaky"][0] == SENT)
        await _until(lambda: _states(migrated_database)["refusing"][0] == FAILED)
        await asyncio.sleep(0.2)
    finally:
        await outbox.stop()
    states_now = _states(migrated_database)
    assert states_now["flaky"][:2] == (SENT, 3)
    assert states_now["refusing"] == (FAILED, 1, "400 invalid")
    assert flaky.sent == ["1.2.3.4"]  # exactly once

    # An operator sends the refused one again; it now goes through.
    with migrated_database.session() as session:
        export_id = session.scalars(select(ExportRow.id).where(ExportRow.destination == "refusing")).one()
    outbox = Outbox(migrated_database, tmp_path, [flaky, refusing], backoff_s=0.05, poll_s=0.02)
    assert outbox.retry(export_id) and not outbox.retry("no-such-export")
    outbox.start()
    try:
        await _until(lambda: _states(migrated_database)["refusing"][0] == SENT)
    finally:
        await outbox.stop()
    assert refusing.sent == ["1.2.3.4"] and flaky.sent == ["1.2.3.4"]


async def test_outbox_rows_survive_a_restart(migrated_database: Database, tmp_path: Path) -> None:
    down = _Recorder("pacs", [ExportFailed("connection refused", True)] * 100)
    outbox = Outbox(migrated_database, tmp_path, [down], backoff_s=0.05, max_backoff_s=0.05, poll_s=0.02)
    _result(migrated_database, outbox)
    outbox.start()
    await _until(lambda: _states(migrated_database)["pacs"][1] >= 2)
    await outbox.stop()
    assert _states(migrated_database)["pacs"][0] == PENDING

    up = _Recorder("pacs", [])  # a new process, the destination back
    restarted = Outbox(Database(migrated_database.url), tmp_path, [up], backoff_s=0.05, poll_s=0.02)
    restarted.start()
    try:
        await _until(lambda: _states(migrated_database)["pacs"][0] == SENT)
    finally:
        await restarted.stop()
    assert up.sent == ["1.2.3.4"]


async def test_destinations_take_only_their_kinds(migrated_database: Database, tmp_path: Path) -> None:
    class DicomOnly(_Recorder):
        accepted = frozenset({"dicom"})

    outbox = Outbox(migrated_database, tmp_path, [DicomOnly("pacs", []), _Recorder("folder", [])])
    _result(migrated_database, outbox, "fhir")
    with migrated_database.session() as session:
        assert sorted(session.scalars(select(ExportRow.destination)).all()) == ["folder"]


class _RecordingModel:
    """Stands in for ``ModelClient`` where a test needs to see the patches a pipeline sends: answers
    every patch with "background everywhere"."""

    def __init__(self, preprocessing: dict[str, object]) -> None:
        self.patches: list[np.ndarray] = []
        self.metadata = {"preprocessing": preprocessing, "labels": ["background", "lesion"]}

    def info(self, model: str) -> ModelInfo:
        return ModelInfo(model, "1", "0" * 64, "cpu", self.metadata, "image", "probabilities")

    def infer_each(
        self, model: str, arrays: list[np.ndarray], priority_class: str = "bulk"
    ) -> list[np.ndarray]:
        self.patches.extend(arrays)
        background = np.zeros((2, *arrays[0].shape[1:]), dtype=np.float32)
        background[0] = 1.0
        return [background for _ in arrays]


def test_a_volume_smaller_than_a_patch_is_padded_with_its_edge_voxels(tmp_path: Path) -> None:
    """A short CT (8 slices of 2.5 mm = 20 mm, patches of 32 at 2 mm) goes on past its last slice as
    its outer slices, not as air, unless the model's metadata says ``padding: constant``."""
    paths = synthetic.write_study(
        "CT", tmp_path / "ct", seed=4, shape=(8, 32, 32), spacing=(2.5, 2.0, 2.0), lesions=(1, 1)
    )
    datasets = [pydicom.dcmread(p) for p in paths]
    spec = PipelineSpec("ct", "segmentation_3d", "ct_model")
    settings = {"window": [-200, 300], "spacing_mm": [2.0, 2.0, 2.0], "patch_size": [32, 32, 32]}

    edge = _RecordingModel(settings)
    result = segment_3d(spec, datasets, cast(ModelClient, edge))
    assert result.summary == "0 lesion(s), total volume 0.0 mL"
    volume = series_to_volume(datasets)
    iso, _ = prep.resample(prep.window(volume.array, -200, 300), volume.spacing, (2.0, 2.0, 2.0))
    n = iso.shape[0]
    before = (32 - n) // 2
    assert iso.shape[1:] == (32, 32) and 0 < n < 32
    (patch,) = edge.patches  # one patch once padded along the slices
    image = patch[0]
    assert np.array_equal(image[before : before + n], iso)
    assert all(np.array_equal(image[k], iso[0]) for k in range(before))
    assert all(np.array_equal(image[k], iso[-1]) for k in range(before + n, 32))

    constant = _RecordingModel({**settings, "padding": "constant"})
    segment_3d(spec, datasets, cast(ModelClient, constant))
    (patch,) = constant.patches
    assert np.array_equal(patch[0][before : before + n], iso)
    assert not patch[0][:before].any() and not patch[0][before + n :].any()

    with pytest.raises(InvalidConfig, match="model 'ct_model' asks for padding 'wrap'"):
        segment_3d(spec, datasets, cast(ModelClient, _RecordingModel({**settings, "padding": "wrap"})))
