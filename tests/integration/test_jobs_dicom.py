"""The ``dicom_studies`` job: a folder of synthetic studies scanned into series in a stable order,
routed, segmented through the core, written as SEG / SR / FHIR once per series (also when a chunk
runs again), audited per series; unmatched series, rejected series and junk files reported."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import math
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.csv as pa_csv
import pydicom
import pytest

from medserve.audit.journal import Journal
from medserve.core.dataplane import Dataplane, build_dataplane
from medserve.core.service import InferenceService
from medserve.demo.dicom_studies import GROUND_TRUTH_FILE, write_study
from medserve.imaging.config import load_config
from medserve.imaging.folder_scan import scan_folder
from medserve.imaging.service import ImagingService
from medserve.jobs.scoring import CoreScorer
from medserve.jobs.spec import parse_spec
from medserve.jobs.standalone import run_standalone
from medserve.jobs.store import JobStore
from medserve.jobs.workload import Item, ItemFailure, SourceError, Workload
from medserve.jobs.workloads.dicom import DicomStudiesWorkload
from medserve.settings import Settings, load_settings
from medserve.store.database import Database
from medserve.trust import Trust, build_trust
from medserve.values.access import Caller, Principal, Role
from medserve.values.errors import ModelNotFound, PermissionDenied

CT_SHAPE, CT_SPACING = (24, 96, 96), (2.5, 2.0, 2.0)
SUMMARY = re.compile(r"(\d+) lesion\(s\), total volume \d+\.\d mL")
T = TypeVar("T")


def _truth(folder: Path) -> dict[str, Any]:
    """The study's ground truth, then the file removed (only DICOM and the junk file stay)."""
    path = folder / GROUND_TRUTH_FILE
    truth: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return truth


@pytest.fixture()
def studies(tmp_path: Path) -> dict[str, Any]:
    """``source/``: a CT study to segment, an MR study no route takes, a CT series with one slice's
    PixelSpacing changed (the pipeline refuses it) and a file that is not DICOM."""
    source = tmp_path / "source"
    write_study("CT", source / "ct", seed=3, shape=CT_SHAPE, spacing=CT_SPACING, lesions=(2, 3))
    write_study("MR", source / "mr", seed=2, shape=(12, 64, 64))
    bad = write_study("CT", source / "ct-bad", seed=5, shape=(8, 32, 32), lesions=(1, 1))
    ds = pydicom.dcmread(bad[3])
    ds.PixelSpacing = [3.0, 3.0]
    ds.save_as(bad[3])
    (source / "notes").mkdir()
    (source / "notes" / "junk.bin").write_bytes(b"not a DICOM file at all\n" * 10)
    return {
        "source": source,
        "ct": _truth(source / "ct"),
        "mr": _truth(source / "mr"),
        "bad": _truth(source / "ct-bad"),
        "results": tmp_path / "results",
    }


def _settings(tmp_path: Path, repository: Path) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", repository=repository)


def _series_files(results: Path, truth: dict[str, Any]) -> list[str]:
    folder = results / truth["study_instance_uid"] / truth["series_instance_uid"]
    return sorted(p.name for p in folder.iterdir())


LESION_NOTE = re.compile(r"Lesion \d+, centroid \((-?\d+\.\d), (-?\d+\.\d), (-?\d+\.\d)\) mm")


def _lesion_observations(bundle: dict[str, Any]) -> list[tuple[float, tuple[float, ...]]]:
    """``(volume mL, centroid in patient mm)`` of each lesion Observation in a FHIR Bundle."""
    lesions = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        notes = [LESION_NOTE.match(n["text"]) for n in resource.get("note", [])]
        match = next((m for m in notes if m), None)
        if resource["resourceType"] == "Observation" and match:
            lesions.append(
                (float(resource["valueQuantity"]["value"]), tuple(float(g) for g in match.groups()))
            )
    return lesions


# -- the source ----------------------------------------------------------------------------------


def test_items_are_series_in_uid_order_then_unusable_files(studies: dict[str, Any]) -> None:
    workload: Workload = DicomStudiesWorkload(studies["source"], {"results_dir": str(studies["results"])})
    entries = list(workload.items())
    assert entries == list(workload.items())  # the same items, the same indices, every time
    series = [e for e in entries if isinstance(e, Item)]
    expected = sorted(
        (t["study_instance_uid"], t["series_instance_uid"])
        for t in (studies["ct"], studies["mr"], studies["bad"])
    )
    assert [(s.payload.study_instance_uid, s.payload.series_instance_uid) for s in series] == expected
    assert [e.index for e in entries] == list(range(4))
    assert entries[-1] == ItemFailure(3, "file notes/junk.bin", "not a DICOM file (no DICM preamble)")
    by_uid = {s.payload.series_instance_uid: s.payload for s in series}
    ct = by_uid[studies["ct"]["series_instance_uid"]]
    assert ct.modality == "CT" and len(ct.paths) == CT_SHAPE[0] and list(ct.paths) == sorted(ct.paths)
    assert f"({CT_SHAPE[0]} file(s) in ct)" in next(s.locator for s in series if s.payload is ct)


def test_a_series_split_across_studies_keeps_its_first_study(tmp_path: Path) -> None:
    paths = write_study("MR", tmp_path / "in", seed=1, shape=(8, 16, 16))
    ds = pydicom.dcmread(paths[-1])
    ds.StudyInstanceUID = "1.2.3.4"
    ds.save_as(paths[-1])
    scan = scan_folder(tmp_path / "in")
    assert len(scan.series) == 1 and scan.series[0].paths == tuple(paths[:-1])
    assert [u.path for u in scan.unreadable] == sorted([tmp_path / "in" / GROUND_TRUTH_FILE, paths[-1]])
    reasons = {u.path: u.reason for u in scan.unreadable}
    assert "to study 1.2.3.4 in this one" in reasons[paths[-1]]


def test_sources_and_options_that_cannot_work_are_refused(studies: dict[str, Any], tmp_path: Path) -> None:
    source, results = studies["source"], str(studies["results"])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no DICOM instance"):
        DicomStudiesWorkload(empty, {"results_dir": results})
    with pytest.raises(SourceError, match="not a folder"):
        DicomStudiesWorkload(source / "notes" / "junk.bin", {"results_dir": results})
    with pytest.raises(ValueError, match="'results_dir' is required"):
        DicomStudiesWorkload(source, {})
    with pytest.raises(ValueError, match="inside the source folder"):
        DicomStudiesWorkload(source, {"results_dir": str(source / "out")})
    with pytest.raises(ValueError, match="unknown result kind"):
        DicomStudiesWorkload(source, {"results_dir": results, "write": ["seg", "pdf"]})
    with pytest.raises(ValueError, match="unknown dicom_studies option"):
        DicomStudiesWorkload(source, {"results_dir": results, "colour": "red"})
    config = tmp_path / "imaging.yaml"
    config.write_text("pipelines: {}\nroutes: [{name: ct, pipeline: lungs, modality: CT}]\n")
    with pytest.raises(ValueError, match="imaging_config.*pipeline 'lungs'"):
        DicomStudiesWorkload(source, {"results_dir": results, "imaging_config": str(config)})
    relative = DicomStudiesWorkload(source, {"results_dir": "results", "write": "sr"})
    assert relative.results_dir == studies["results"] and relative.write == ("sr",)
    assert relative.models == ("chest_xray_classifier", "ct_lesion_segmentation")


# -- a whole job ---------------------------------------------------------------------------------


def test_standalone_job_segments_routes_and_reports(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    spec = parse_spec(
        {
            "workload": "dicom_studies",
            "source": str(studies["source"]),
            "sink": {"path": str(tmp_path / "out" / "series.csv")},
            "options": {"results_dir": str(studies["results"])},
            "chunk_size": 2,
        }
    )
    settings = _settings(tmp_path, example_repository)
    out = io.StringIO()
    job_id, state = run_standalone(settings, spec, out=out, install_signals=False)
    assert state == "succeeded", out.getvalue()
    assert "succeeded: 2 scored, 2 failed" in out.getvalue()

    rows = {r["series_instance_uid"]: r for r in pa_csv.read_csv(tmp_path / "out" / "series.csv").to_pylist()}
    ct, mr, bad = studies["ct"], studies["mr"], studies["bad"]
    assert set(rows) == {ct["series_instance_uid"], mr["series_instance_uid"]}
    done = rows[ct["series_instance_uid"]]
    assert (done["status"], done["pipeline"], done["model"], done["modality"]) == (
        "done", "ct-lesions", "ct_lesion_segmentation", "CT",
    )  # fmt: skip
    assert done["instances"] == CT_SHAPE[0] and done["reason"] == "matched rule 'ct'"
    found = SUMMARY.fullmatch(done["summary"])
    assert found is not None, done["summary"]
    unmatched = rows[mr["series_instance_uid"]]
    assert (unmatched["status"], unmatched["files"], unmatched["model"]) == ("unmatched", "", "")
    assert "rule 'ct': Modality MR not in [CT]" in unmatched["reason"]

    # One SEG, one SR and one FHIR Bundle for the CT series, named in its row; nothing else written.
    files = done["files"].split(",")
    assert [Path(f).name for f in files] == _series_files(studies["results"], ct)
    assert [Path(f).name.split("-")[0] for f in files] == ["FHIR", "SEG", "SR"]
    assert sorted(p.name for p in studies["results"].iterdir()) == [ct["study_instance_uid"]]
    seg, sr = (pydicom.dcmread(studies["results"] / f) for f in files[1:])
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert seg.StudyInstanceUID == ct["study_instance_uid"]
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == {ct["series_instance_uid"]}
    bundle = json.loads((studies["results"] / files[0]).read_text())
    assert bundle["resourceType"] == "Bundle"

    # The demonstration model finds each of the phantom's lesions once, where it is, with about its volume;
    # anything else it marks is smaller than the smallest lesion the phantom draws (radius 5 mm, 0.52 mL).
    lesions = _lesion_observations(bundle)
    assert len(lesions) == int(found.group(1))
    for truth in ct["lesions"]:
        near = [
            v for v, centre in lesions if math.dist(centre, truth["centre_patient_mm"]) <= truth["radius_mm"]
        ]
        assert len(near) == 1, (truth, lesions)
        assert abs(near[0] - truth["volume_ml"]) <= 0.5 * truth["volume_ml"] + 0.3, (truth, lesions)
    elsewhere = [
        v
        for v, centre in lesions
        if all(math.dist(centre, t["centre_patient_mm"]) > t["radius_mm"] for t in ct["lesions"])
    ]
    assert all(v < 0.5 for v in elsewhere), (ct["lesions"], lesions)

    failures = pa_csv.read_csv(tmp_path / "out" / "series.csv.failures.csv").to_pylist()
    assert [f["locator"] for f in failures][1] == "file notes/junk.bin"
    assert failures[0]["locator"].startswith(f"series {bad['series_instance_uid']} (8 file(s) in ct-bad)")
    assert "pipeline 'ct-lesions'" in failures[0]["reason"] and "PixelSpacing" in failures[0]["reason"]

    # Each routed series is one audited inference under the job's door: the good one ok, the bad one refused.
    records = [
        r
        for r in Journal(tmp_path / "data" / "audit").iter_records()
        if r.event == "inference" and r.door == f"job:{job_id}"
    ]
    assert sorted(r.status for r in records) == ["SeriesRejected", "ok"]
    good = next(r for r in records if r.status == "ok")
    assert (good.model, good.model_version) == ("ct_lesion_segmentation", "1")
    assert good.model_digest and good.study_ref and ct["study_instance_uid"] not in good.study_ref


# -- a chunk done again --------------------------------------------------------------------------


@contextlib.contextmanager
def running_core(settings: Settings) -> Iterator[tuple[Dataplane, Trust, asyncio.AbstractEventLoop]]:
    """The dataplane built as ``medserve job run`` builds it (no model loaded beforehand), the trust
    parts it runs over, and an event loop in its own thread that owns it."""
    trust = build_trust(settings)
    dataplane = build_dataplane(settings, trust, placement=False, monitoring=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield dataplane, trust, loop
    finally:
        asyncio.run_coroutine_threadsafe(dataplane.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        trust.close()


def _scorer(service: InferenceService, loop: asyncio.AbstractEventLoop, caller: Caller) -> CoreScorer:
    return CoreScorer(service, loop, caller, "ct_lesion_segmentation", batch_size=1, priority_class="bulk")


@contextlib.contextmanager
def job_core(settings: Settings, caller: Caller) -> Iterator[CoreScorer]:
    """The core a job scores through (no model loaded beforehand), on a loop in its own thread."""
    with running_core(settings) as (dataplane, _, loop):
        yield _scorer(dataplane.service, loop, caller)


def _caller(models: frozenset[str] | None = None, role: Role = Role.ADMIN, name: str = "tester") -> Caller:
    return Caller(Principal(name, role, models, "job:test"), "job:test", "test")


def _write_now(write: Callable[[], T], what: str) -> T:
    """``with_room`` for a chunk run outside a job: just write."""
    return write()


def _written(table: pa.Table, truth: dict[str, Any]) -> list[str]:
    """The file names the result row of ``truth``'s series lists."""
    (row,) = [r for r in table.to_pylist() if r["series_instance_uid"] == truth["series_instance_uid"]]
    return [Path(f).name for f in row["files"].split(",")]


def test_a_chunk_run_again_leaves_one_set_of_results(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    ct, results = studies["ct"], studies["results"]
    shutil.rmtree(studies["source"] / "ct-bad")
    workload = DicomStudiesWorkload(studies["source"], {"results_dir": str(results)})
    items = [e for e in workload.items() if isinstance(e, Item)]
    study_dir = results / ct["study_instance_uid"]
    stale = study_dir / f".staging-{ct['series_instance_uid']}-0123456789ab"  # left by a crash mid-write
    stale.mkdir(parents=True)
    (stale / "SEG-1.2.3.dcm").write_bytes(b"half written")
    with job_core(_settings(tmp_path, example_repository), _caller()) as scorer:
        first, failures = workload.run_chunk(items, scorer, _write_now)
        assert first is not None and failures == []
        second, _ = workload.run_chunk(items, scorer, _write_now)
        assert second is not None
        listing = _series_files(results, ct)
        assert len(listing) == 3 and sorted(p.name for p in study_dir.iterdir()) == [
            ct["series_instance_uid"]
        ]
        assert _written(second, ct) == listing != _written(first, ct)  # the second set replaced the first
        assert first.drop_columns("files").equals(second.drop_columns("files"))

        only_sr = DicomStudiesWorkload(studies["source"], {"results_dir": str(results), "write": ["sr"]})
        third, _ = only_sr.run_chunk(items, scorer, _write_now)
        assert third is not None
        assert [n.split("-")[0] for n in _series_files(results, ct)] == ["SR"]


def test_a_full_disk_while_writing_series_results_pauses_the_job(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The series' SEG/SR/FHIR cannot be written (ENOSPC, twice): the job pauses saying so, tries again,
    and ends with one set of results, as if the disk had never been full."""
    import medserve.jobs.standalone as standalone
    import medserve.jobs.workloads.dicom as dicom_workload

    real = dicom_workload.write_results
    refusals = {"left": 2}

    def full_disk(result: Any, folder: Path) -> Any:
        if refusals["left"]:
            refusals["left"] -= 1
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "partial.dcm").write_bytes(b"cut short")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(result, folder)

    paused: list[str] = []  # the job's error while paused, as ``job status`` shows it
    store = JobStore(Database(f"sqlite:///{tmp_path / 'data' / 'medserve.db'}"))

    class Watching(standalone.ProgressBar):  # type: ignore[misc, name-defined]
        def __call__(self, progress: Any) -> None:
            if progress.state == "paused":
                paused.append(str(store.get(progress.job_id).error))
            super().__call__(progress)

    monkeypatch.setattr(dicom_workload, "write_results", full_disk)
    monkeypatch.setattr(standalone, "ProgressBar", Watching)
    shutil.rmtree(studies["source"] / "ct-bad")
    spec = parse_spec(
        {
            "workload": "dicom_studies",
            "source": str(studies["source"]),
            "sink": {"path": str(tmp_path / "out" / "series.csv")},
            "options": {"results_dir": str(studies["results"])},
        }
    )
    settings = load_settings(
        None, data_dir=tmp_path / "data", repository=example_repository, jobs_retry_s=0.05
    )
    out = io.StringIO()
    job_id, state = run_standalone(settings, spec, out=out, install_signals=False)
    assert state == "succeeded", out.getvalue()
    ct = studies["ct"]
    assert refusals["left"] == 0 and len(paused) == 1, paused
    assert f"no space left while writing the results of series {ct['series_instance_uid']}" in paused[0]
    assert store.get(job_id).error in (None, "")
    study_dir = studies["results"] / ct["study_instance_uid"]
    assert sorted(p.name for p in study_dir.iterdir()) == [ct["series_instance_uid"]]  # no staging left
    assert [n.split("-")[0] for n in _series_files(studies["results"], ct)] == ["FHIR", "SEG", "SR"]
    rows = pa_csv.read_csv(tmp_path / "out" / "series.csv").to_pylist()
    assert sorted(r["status"] for r in rows) == ["done", "unmatched"]


def test_a_caller_without_a_grant_runs_nothing(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    workload = DicomStudiesWorkload(studies["source"], {"results_dir": str(studies["results"])})
    items = [e for e in workload.items() if isinstance(e, Item) and e.payload.modality == "CT"]
    settings = _settings(tmp_path, example_repository)
    with (
        job_core(settings, _caller(frozenset({"simple"}))) as scorer,
        pytest.raises(PermissionDenied, match="no grant for model 'ct_lesion_segmentation'"),
    ):
        workload.run_chunk(items, scorer, _write_now)
    assert not studies["results"].exists()


# -- loading a pipeline's model --------------------------------------------------------------------

CT_MODEL = "ct_lesion_segmentation"


def _loads(data_dir: Path) -> list[tuple[str, str, str, str]]:
    """``(principal, door, model, status)`` of every ``model.load`` audit record."""
    return [
        (r.principal, r.door, r.model, r.status)
        for r in Journal(data_dir / "audit").iter_records()
        if r.event == "model.load"
    ]


def test_a_jobs_pipeline_model_is_loaded_only_with_manage_and_the_load_is_audited(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    """The CT model is not loaded: a job of a ``service`` principal (infer, not manage) is refused the
    load (no record, as at every door), nothing loaded, nothing written; an admin's job loads it
    through the dataplane, audited as ``model.load`` under the job's principal and door; then the
    ``service`` principal's job runs the series on the loaded model without loading anything."""
    shutil.rmtree(studies["source"] / "ct-bad")
    workload = DicomStudiesWorkload(studies["source"], {"results_dir": str(studies["results"])})
    items = [e for e in workload.items() if isinstance(e, Item) and e.payload.modality == "CT"]
    settings = _settings(tmp_path, example_repository)
    scanner = _caller(role=Role.SERVICE, name="scanner")
    with running_core(settings) as (dataplane, _, loop):
        service = dataplane.service
        with pytest.raises(PermissionDenied, match="role 'service' of 'scanner' may not manage"):
            workload.run_chunk(items, _scorer(service, loop, scanner), _write_now)
        with pytest.raises(ModelNotFound, match=f"model '{CT_MODEL}' is not loaded"):
            service.model_info(CT_MODEL, _caller())
        assert not studies["results"].exists()
        assert _loads(settings.data_dir) == []

        loaded, failures = workload.run_chunk(items, _scorer(service, loop, _caller()), _write_now)
        assert failures == [] and loaded is not None
        assert service.model_info(CT_MODEL, _caller()).version == "1"
        again, failures = workload.run_chunk(items, _scorer(service, loop, scanner), _write_now)
        assert failures == [] and again is not None
        assert [r["status"] for r in again.to_pylist()] == ["done"]
    assert _loads(settings.data_dir) == [("tester", "job:test", CT_MODEL, "ok")]
    inferences = [
        r.principal
        for r in Journal(settings.data_dir / "audit").iter_records()
        if r.event == "inference" and r.model == CT_MODEL
    ]
    assert inferences == ["tester", "scanner"]


async def _image_series(imaging: ImagingService, paths: list[Path], series_uid: str) -> str:
    """Send ``paths`` as a modality would (a ``service`` principal) and wait for the series' end state."""
    modality = Caller(Principal("aet:CT", Role.SERVICE, None, "aet:CT"), "dimse", "")
    await imaging.start()
    try:
        for path in paths:
            await imaging.ingest(path.read_bytes(), modality)
        for _ in range(600):
            series = [s for study in imaging.studies(series_uid=series_uid) for s in study["series"]]
            if series and series[0]["state"] in ("done", "failed", "rejected"):
                return str(series[0]["state"])
            await asyncio.sleep(0.1)
        raise TimeoutError(f"series still {series[0]['state'] if series else 'unknown'} after 60 s")
    finally:
        await imaging.stop()


def test_the_imaging_service_loads_a_pipeline_model_as_a_job_does(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    """A CT series arrives while its model is not loaded: the imaging service runs it through the
    same series runner, so the model is loaded through the dataplane (``manage``: the imaging
    pipelines run as the server's own admin principal) and the load is audited under the pipeline's
    door before the series' inference record."""
    ct = studies["ct"]
    paths = sorted((studies["source"] / "ct").glob("*.dcm"))
    assert len(paths) == CT_SHAPE[0]
    settings = _settings(tmp_path, example_repository)
    with running_core(settings) as (dataplane, trust, loop):
        imaging = ImagingService(
            dataplane.service,
            trust.database,
            settings.data_dir,
            load_config(None, settings.data_dir),
            [],
            quiet_time_s=0.2,
        )
        state = asyncio.run_coroutine_threadsafe(
            _image_series(imaging, paths, ct["series_instance_uid"]), loop
        ).result(120)
        assert state == "done"
    records = [
        r
        for r in Journal(settings.data_dir / "audit").iter_records()
        if r.model == CT_MODEL and r.event in ("model.load", "inference")
    ]
    assert [(r.event, r.principal, r.door, r.status) for r in records] == [
        # A routed series runs as its uploader (the sending AE's principal), audited under the pipeline.
        ("model.load", "aet:CT", "pipeline:ct-lesions", "ok"),
        ("inference", "aet:CT", "pipeline:ct-lesions", "ok"),
    ]


def test_a_series_whose_results_cannot_be_written_fails_once_with_the_reason(
    studies: dict[str, Any], example_repository: Path, tmp_path: Path
) -> None:
    """Writing the results fails (here the study's results folder cannot be made): the series ends
    ``failed`` with the reason, instead of being left ``processing``, taken back as interrupted on the
    next watch pass and run again, over and over."""
    ct = studies["ct"]
    paths = sorted((studies["source"] / "ct").glob("*.dcm"))
    settings = _settings(tmp_path, example_repository)
    with running_core(settings) as (dataplane, trust, loop):
        imaging = ImagingService(
            dataplane.service,
            trust.database,
            settings.data_dir,
            load_config(None, settings.data_dir),
            [],
            quiet_time_s=0.2,
        )
        (imaging.results_root / ct["study_instance_uid"]).write_text("a file where the folder goes")
        state = asyncio.run_coroutine_threadsafe(
            _image_series(imaging, paths, ct["series_instance_uid"]), loop
        ).result(120)
        assert state == "failed"
        series = imaging.studies(series_uid=ct["series_instance_uid"])[0]["series"][0]
        assert series["reason"].startswith("writing the results failed: "), series
    inferences = [r for r in Journal(settings.data_dir / "audit").iter_records() if r.event == "inference"]
    assert len(inferences) == 1  # run once, not again and again
