"""Transfer syntaxes and photometric interpretations a PACS sends: decoded when medserve can, refused at
C-STORE with an Error Comment when it cannot; dcmtk's storescu as the sender."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import MPEG2MPML
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from medserve.clinical.dicom.series_to_volume import series_to_frames
from medserve.imaging.instance_store import NotDicom, Undecodable, parse_instance
from medserve.transport.dicom_status import StoreStatus
from medserve.transport.dimse import StorageSCP, ingesting
from medserve.values.access import Caller

MR = Path(get_testdata_file("MR_small.dcm", download=False))
YBR_422 = Path(get_testdata_file("SC_ybr_full_422_uncompressed.dcm", download=False))
DCMCJPEG = shutil.which("dcmcjpeg")
STORESCU = shutil.which("storescu")


def _frames(path: Path) -> np.ndarray:
    return series_to_frames([pydicom.dcmread(path)]).array


def test_uncompressed_ybr_full_422_is_accepted_and_decoded() -> None:
    ds = parse_instance(YBR_422.read_bytes())  # 2 bytes per pixel, not 3: not truncated
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    frames = _frames(YBR_422)
    assert frames.shape == (1, 100, 100) and float(frames.max()) > float(frames.min())
    with pytest.raises(NotDicom, match="truncated"):
        data = YBR_422.read_bytes()
        parse_instance(data[: len(data) - 1000])


@pytest.mark.parametrize(
    "name",
    ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"],
)
def test_lossless_syntaxes_decode_to_the_uncompressed_pixels(name: str) -> None:
    path = Path(get_testdata_file(name, download=False))
    parse_instance(path.read_bytes())
    np.testing.assert_array_equal(_frames(path), _frames(MR))


@pytest.mark.skipif(DCMCJPEG is None, reason="dcmcjpeg is not installed (Debian package dcmtk)")
def test_jpeg_lossless_sv1_written_by_dcmtk_decodes_exactly(tmp_path: Path) -> None:
    assert DCMCJPEG is not None
    target = tmp_path / "sv1.dcm"
    subprocess.run([DCMCJPEG, "+e1", str(MR), str(target)], check=True, timeout=60)
    assert pydicom.dcmread(target).file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    np.testing.assert_array_equal(_frames(target), _frames(MR))


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm"])
def test_lossy_syntaxes_decode(name: str) -> None:
    path = Path(get_testdata_file(name, download=False))
    ds = parse_instance(path.read_bytes())
    frames = _frames(path)
    assert frames.shape == (1, int(ds.Rows), int(ds.Columns)) and np.isfinite(frames).all()
    if name == "JPGExtended.dcm":
        assert ds.BitsStored == 12 and float(frames.max()) > 255  # 12-bit JPEG Extended


def _propose(path: Path) -> list[str]:
    """storescu's option to propose ``path``'s own transfer syntax (beside uncompressed ones)."""
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    options = {pydicom.uid.JPEGLosslessSV1: "-xs", pydicom.uid.JPEG2000Lossless: "-xv"}
    return [options[syntax]] if syntax in options else []


def _as_mpeg2() -> bytes:
    """An encapsulated image whose file meta claims MPEG-2 video, which nothing here decodes."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm", download=False))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_a_syntax_without_a_decoder_is_refused_at_ingestion() -> None:
    with pytest.raises(Undecodable, match="MPEG2.*cannot decode"):
        parse_instance(_as_mpeg2())


@pytest.fixture()
def ingesting_scp() -> Iterator[tuple[StorageSCP, list[str]]]:
    """A storage SCP whose ingest parses each instance as the imaging service does."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stored: list[str] = []

    async def ingest(encoded: bytes, caller: Caller) -> object:
        ds = parse_instance(encoded)
        stored.append(str(ds.file_meta.TransferSyntaxUID))
        return ds

    scp = StorageSCP("MEDSERVE", ingesting(ingest, loop, 10), host="127.0.0.1", port=0)
    scp.start()
    try:
        yield scp, stored
    finally:
        scp.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_refused_c_store_tells_the_sender_why(ingesting_scp: tuple[StorageSCP, list[str]]) -> None:
    scp, stored = ingesting_scp
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDSERVE")
    assert assoc.is_established
    ds = pydicom.dcmread(MR)
    ds.PixelData = ds.PixelData[:-1000]
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert status.ErrorComment.startswith("the pixel data is truncated") and len(status.ErrorComment) <= 64
    assert stored == []


def test_a_syntax_without_a_decoder_is_not_negotiated(ingesting_scp: tuple[StorageSCP, list[str]]) -> None:
    scp, _stored = ingesting_scp
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, [MPEG2MPML])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDSERVE")
    assert not assoc.is_established  # the sender converts, or learns at once that it cannot send


@pytest.mark.skipif(
    STORESCU is None or DCMCJPEG is None, reason="storescu is not installed (Debian package dcmtk)"
)
def test_storescu_sends_compressed_and_ybr_instances(
    ingesting_scp: tuple[StorageSCP, list[str]], tmp_path: Path
) -> None:
    assert STORESCU is not None and DCMCJPEG is not None
    scp, stored = ingesting_scp
    sv1 = tmp_path / "sv1.dcm"
    subprocess.run([DCMCJPEG, "+e1", str(MR), str(sv1)], check=True, timeout=60)
    files = [sv1, YBR_422, Path(get_testdata_file("MR_small_jp2klossless.dcm", download=False))]
    for path in files:  # one association each: storescu then proposes just that file's syntax
        done = subprocess.run(
            [
                STORESCU,
                "-aet",
                "MODALITY",
                "-aec",
                "MEDSERVE",
                *_propose(path),
                "127.0.0.1",
                str(scp.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(stored) == sorted(str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files)
