"""The SR document built around its content (``sr_document.comprehensive_3d_sr``, what ``write_sr`` uses)
is, element by element, the document highdicom's ``Comprehensive3DSR`` builds from the same content:
for classifications of CR, DX and multi-frame US images, and CT segmentations with and without a SEG."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from medserve.clinical.dicom import preprocessing as prep
from medserve.clinical.dicom.parametric_map_writer import write_parametric_map
from medserve.clinical.dicom.results import Algorithm, Explanation, Finding, ImagingResult, Segment
from medserve.clinical.dicom.seg_writer import write_seg
from medserve.clinical.dicom.series_to_volume import series_to_frames, series_to_volume
from medserve.clinical.dicom.sr_document import comprehensive_3d_sr
from medserve.clinical.dicom.sr_writer import write_sr
from medserve.demo import dicom_studies as synthetic

# Set at each build (highdicom writes the time of the build), so they differ between two builds.
BUILD_TIMES = {
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContributionDateTime",
}
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Hernia", "Mass", "Nodule", "Pleural_Thickening")


def _algorithm(research_use: bool) -> Algorithm:
    return Algorithm("chest_model", "3", "c4" * 32, research_use, "for tests")


def _read(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def _classification(modality: str, tmp_path: Path, research_use: bool = True) -> ImagingResult:
    datasets = _read(synthetic.write_study(modality, tmp_path / modality, seed=11))
    frames = series_to_frames(datasets)
    findings = tuple(
        Finding(label, round(0.13 * (k + 1) % 1, 3), 0.5, k % len(frames.refs))
        for k, label in enumerate(LABELS)
    )
    first = datasets[0]
    return ImagingResult(
        "xray",
        _algorithm(research_use),
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        frames=frames,
        findings=findings,
    )


def _segmentation(tmp_path: Path) -> ImagingResult:
    datasets = _read(synthetic.write_study("CT", tmp_path / "ct", seed=12))
    volume = series_to_volume(datasets)
    label_map = (volume.array > 60).astype(np.uint8)  # the phantom's lesions are +80..150 HU
    lesions = prep.connected_components(label_map, volume.spacing, volume.origin, volume.direction, 10)
    assert lesions
    first = datasets[0]
    return ImagingResult(
        "ct",
        _algorithm(True),
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        volume=volume,
        segments=(Segment(1, "lesion"),),
        label_map=label_map,
        lesions=tuple(lesions),
    )


def _written(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def differences(left: Dataset, right: Dataset, path: str = "") -> list[str]:
    """Where two datasets differ, element by element through every sequence (build times aside)."""
    found: list[str] = []
    for tag in sorted(set(left.keys()) | set(right.keys())):
        a, b = left.get(tag), right.get(tag)
        name = f"{path}/{(a or b).keyword or tag}"
        if a is None or b is None:
            found.append(f"{name}: only in the {'second' if a is None else 'first'}")
        elif a.keyword in BUILD_TIMES:
            continue
        elif a.VR != b.VR:
            found.append(f"{name}: VR {a.VR} != {b.VR}")
        elif a.VR == "SQ":
            if len(a.value) != len(b.value):
                found.append(f"{name}: {len(a.value)} items != {len(b.value)}")
            for k, (x, y) in enumerate(zip(a.value, b.value)):
                found += differences(x, y, f"{name}[{k}]")
        elif a.value != b.value:
            found.append(f"{name}: {a.value!r} != {b.value!r}")
    return found


def _both(result: ImagingResult, seg: Dataset | None = None) -> tuple[Dataset, Dataset]:
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    fast = write_sr(result, seg=seg, **uids)
    reference = write_sr(result, seg=seg, highdicom_document=True, **uids)
    return _written(fast), _written(reference)


def _assert_same(fast: Dataset, reference: Dataset) -> None:
    assert differences(fast, reference) == []
    assert differences(fast.file_meta, reference.file_meta) == []
    assert len(fast.ContentSequence) > 3 and "CurrentRequestedProcedureEvidenceSequence" in fast


@pytest.mark.parametrize(("modality", "research_use"), [("CR", True), ("DX", False), ("US", True)])
def test_classification_sr_is_highdicoms_document(modality: str, research_use: bool, tmp_path: Path) -> None:
    _assert_same(*_both(_classification(modality, tmp_path, research_use)))


def test_sr_referencing_an_explanation_map_is_highdicoms_document(tmp_path: Path) -> None:
    result = _classification("CR", tmp_path)
    values = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    pm = write_parametric_map(result, Explanation(2, "occlusion", values))
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    fast = write_sr(result, explanation_maps={2: pm}, **uids)
    reference = write_sr(result, explanation_maps={2: pm}, highdicom_document=True, **uids)
    _assert_same(_written(fast), _written(reference))
    assert str(pm.SOPInstanceUID) in {str(item.ReferencedSOPInstanceUID) for item in _evidence_items(fast)}


def _evidence_items(sr: Dataset) -> list[Dataset]:
    return [
        instance
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    ]


def test_segmentation_sr_is_highdicoms_document_with_and_without_a_seg(tmp_path: Path) -> None:
    result = _segmentation(tmp_path)
    seg = write_seg(result)
    _assert_same(*_both(result, seg))
    _assert_same(*_both(result))


def _items(items: list[Dataset]) -> list[Dataset]:
    return [found for item in items for found in (item, *_items(list(item.get("ContentSequence", []))))]


def test_the_comparison_sees_a_changed_value(tmp_path: Path) -> None:
    fast, reference = _both(_classification("CR", tmp_path))
    coded = [item for item in _items(list(fast.ContentSequence)) if "ConceptCodeSequence" in item]
    coded[-1].ConceptCodeSequence[0].CodeValue = "0"
    assert differences(fast, reference) != []


def test_a_reference_outside_the_evidence_is_refused_as_highdicom_does(tmp_path: Path) -> None:
    result = _segmentation(tmp_path)
    report = write_sr(result, seg=write_seg(result)).content
    assert result.volume is not None
    evidence = list(result.volume.sources)  # the lesion groups reference the SEG, not given here
    options = {
        "series_instance_uid": generate_uid(),
        "series_number": 1,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
    }
    with pytest.raises(ValueError, match="No evidence was provided"):
        hd.sr.Comprehensive3DSR(evidence=evidence, content=report[0], **options)
    with pytest.raises(ValueError, match="No evidence was provided"):
        comprehensive_3d_sr(evidence, report, **options)


def test_the_document_holds_the_content_built_not_a_copy(tmp_path: Path) -> None:
    """What makes it fast: no copy of the tree is made and parsed back (highdicom's ``content`` is one)."""
    sr = write_sr(_classification("CR", tmp_path))
    root = sr.content[0]
    assert all(a is b for a, b in zip(sr.ContentSequence, root.ContentSequence, strict=True))
