"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with two of its Options.

:class:`Deidentifier` returns a de-identified copy of a pydicom dataset:

* every attribute of :mod:`medserve.security.deid_table` (Table E.1-1) gets its Basic Profile
  action, at the top level and inside every sequence item; sequences not in the table are kept
  and their items de-identified the same way, so a UID inside a Referenced*Sequence item maps
  exactly as the same UID at the top level;
* private attributes, the curve and overlay groups and (retired) group lengths are removed;
* Patient's Name and Patient ID become one pseudonym, ``<prefix>-<12 hex>``, keyed on the Patient
  ID (on the name when there is no ID), so one patient keeps one pseudonym across studies;
* instance UIDs become :meth:`Pseudonymizer.uid` of the original, the same in every run with the
  same key, unless ``retain_uids`` (Retain UIDs Option);
* dates and times get their profile action (zero length, or a dummy where a value may be
  required), and date, time and datetime attributes the table does not list get a dummy too
  (PS3.15 E.1.1 Note 4), unless ``retain_dates`` (Retain Longitudinal Temporal Information with
  Full Dates Option) keeps them, Patient's Birth Date and Time excepted;
* the File Meta Information and preamble are replaced (E.1.1 item 7): Media Storage SOP
  Instance UID equals the new SOP Instance UID;
* Patient Identity Removed is YES, and De-identification Method and its code sequence (CID 7050)
  name the profile and options.

Not done: the Clean Pixel Data Option (text burned into pixels stays; check Burned In
Annotation), and the clean options for descriptions, structured content and graphics.
"""

from __future__ import annotations

import copy
import uuid

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from medserve.security.deid_table import (
    TABLE,
    TEMPORAL_VRS,
    Action,
    in_removed_group,
    is_retained_temporal,
    resolve,
)
from medserve.security.pseudonym import Pseudonymizer
from medserve.values.errors import InvalidConfig

#: Identifies medserve's de-identifier in the File Meta Information it writes.
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:medserve:deidentify').int}"
IMPLEMENTATION_VERSION_NAME = "MEDSERVE_DEID"

#: CID 7050 De-identification Method codes, scheme DCM.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
RETAIN_UIDS_CODE = ("113110", "Retain UIDs Option")
RETAIN_FULL_DATES_CODE = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")

DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, str | int | float] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "FD": 0.0,
    "FL": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}

_PATIENT_NAME = Tag("PatientName")
_PATIENT_ID = Tag("PatientID")
_MAX_PREFIX = 32


class Deidentifier:
    """Applies the Basic Profile (and the chosen Options) to copies of datasets."""

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        *,
        retain_uids: bool = False,
        retain_dates: bool = False,
        patient_id_prefix: str = "ANON",
    ) -> None:
        if (
            not patient_id_prefix
            or len(patient_id_prefix) > _MAX_PREFIX
            or not patient_id_prefix.isascii()
            or not patient_id_prefix.isprintable()
            or any(c in patient_id_prefix for c in "\\^=")
        ):
            raise InvalidConfig(
                f"patient_id_prefix must be 1 to {_MAX_PREFIX} printable ASCII characters "
                "without '\\', '^' or '='"
            )
        self._pseudonyms = pseudonymizer
        self.retain_uids = retain_uids
        self.retain_dates = retain_dates
        self.patient_id_prefix = patient_id_prefix

    def patient_pseudonym(self, patient_id: str) -> str:
        """The pseudonym that replaces Patient's Name and Patient ID; "" for ""."""
        ref = self._pseudonyms.ref("patient", patient_id.strip())
        return f"{self.patient_id_prefix}-{ref[:12]}" if ref else ""

    def method_description(self) -> list[str]:
        """De-identification Method values: the profile and options applied (64 chars each)."""
        return [meaning for _, meaning in self._method_codes()]

    def apply(self, ds: Dataset) -> FileDataset:
        """A de-identified copy of ``ds`` with new File Meta Information; ``ds`` is not changed."""
        work = Dataset()
        for elem in ds:  # element by element: Dataset(ds) would share ds's element dict
            work.add(copy.deepcopy(elem))
        work.remove_private_tags()
        self._clean(work)
        self._mark(work)
        meta = self._file_meta(ds, work)
        syntax = UID(meta.TransferSyntaxUID)
        implicit, little = (
            (syntax.is_implicit_VR, syntax.is_little_endian) if syntax.is_transfer_syntax else (False, True)
        )
        return FileDataset(
            "", work, preamble=b"\x00" * 128, file_meta=meta, is_implicit_VR=implicit, is_little_endian=little
        )

    # -- the profile ----------------------------------------------------------------------------
    def _clean(self, ds: Dataset) -> None:
        pseudonym = self._pseudonym_for(ds)
        for tag in list(ds.keys()):
            if tag.is_private or tag.element == 0 or in_removed_group(tag):  # element 0: group lengths
                del ds[tag]
                continue
            elem = ds[tag]
            action = self._action(tag, elem)
            if action is Action.REMOVE:
                del ds[tag]
            elif action is Action.KEEP or action is Action.CLEAN_ITEMS:
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._clean(item)
            elif action is Action.UID:
                elem.value = self._map_uids(elem)
            elif action is Action.ZERO:
                if tag in (_PATIENT_NAME, _PATIENT_ID) and pseudonym:
                    elem.value = pseudonym
                else:
                    elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
            else:
                _set_dummy(elem)

    def _action(self, tag: BaseTag, elem: DataElement) -> Action:
        code = TABLE.get(int(tag))
        is_sequence = elem.VR == "SQ"
        if self.retain_dates and is_retained_temporal(int(tag), elem.VR):
            return Action.KEEP
        if code is None:
            return Action.DUMMY if elem.VR in TEMPORAL_VRS else Action.KEEP
        action = resolve(code, is_sequence, elem.VR)
        if action is Action.UID and self.retain_uids:
            return Action.KEEP
        return action

    def _pseudonym_for(self, ds: Dataset) -> str:
        key = str(ds[_PATIENT_ID].value or "") if _PATIENT_ID in ds else ""
        if not key.strip() and _PATIENT_NAME in ds:
            key = str(ds[_PATIENT_NAME].value or "")
        return self.patient_pseudonym(key)

    def _map_uids(self, elem: DataElement) -> str | list[str] | None:
        if elem.VM == 0:
            return None
        if elem.VM == 1:
            return self._pseudonyms.uid(str(elem.value))
        return [self._pseudonyms.uid(str(value)) for value in elem.value]

    # -- markers and file meta ------------------------------------------------------------------
    def _method_codes(self) -> list[tuple[str, str]]:
        codes = [BASIC_PROFILE_CODE]
        if self.retain_uids:
            codes.append(RETAIN_UIDS_CODE)
        if self.retain_dates:
            codes.append(RETAIN_FULL_DATES_CODE)
        return codes

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.method_description()
        items = []
        for value, meaning in self._method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.retain_dates else "REMOVED"

    def _file_meta(self, original: Dataset, clean: Dataset) -> FileMetaDataset:
        old = getattr(original, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.FileMetaInformationGroupLength = 0  # the writer sets the real length
        meta.FileMetaInformationVersion = b"\x00\x01"
        sop_class = clean.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        sop_instance = str(clean.get("SOPInstanceUID") or "")
        if not sop_instance and old.get("MediaStorageSOPInstanceUID"):
            old_uid = str(old.MediaStorageSOPInstanceUID)
            sop_instance = old_uid if self.retain_uids else self._pseudonyms.uid(old_uid)
        if sop_instance:
            meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        return meta


def _set_dummy(elem: DataElement) -> None:
    """A non-empty dummy value of the element's VR; an empty value stays empty."""
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.is_empty:
        return
    elif elem.VR in _DUMMIES:
        elem.value = _DUMMIES[elem.VR]
    else:
        elem.value = elem.empty_value
