"""DICOM storage statuses: the C-STORE response statuses (PS3.4 B.2.3, PS3.7 C) that are also the
STOW-RS Failure Reasons (PS3.18), shared by the doors that send or read them.

The DIMSE door answers with them (its table maps medserve's errors onto :class:`StoreStatus`), the
DICOMweb door puts them in a STOW-RS reply's Failed SOP Sequence, and the outbound doors (C-STORE
SCU, STOW-RS client) read a receiver's statuses back to decide whether a resend may succeed.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category


class StoreStatus(IntEnum):
    """The storage statuses medserve answers or reads (PS3.4 B.2.3, PS3.7 C, PS3.18)."""

    SUCCESS = 0x0000
    WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
    WARNING_ELEMENTS_DISCARDED = 0xB006
    WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_INSTANCE_UID_MISMATCH = 0xC409  # STOW-RS: "Referenced Study Instance UID mismatch"
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORISED = 0x0124
    RESOURCE_LIMITATION = 0x0213


def status_text(status: int) -> str:
    """The Storage Service meaning of a DIMSE status, e.g. ``"Failure: Refused: Out of Resources"``."""
    category = code_to_category(status)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"{category}: {meaning}" if meaning else category


def is_warning(status: int) -> bool:
    """Stored, with a warning (coercion, elements discarded, …): the Warning statuses of PS3.4/PS3.7."""
    return 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116)


def out_of_resources(status: int) -> bool:
    """A refusal for want of resources now (``0xA7xx``, ``0x0213``): a later resend may succeed.

    The DIMSE door answers it for the errors of a server that cannot serve now (overloaded, its store
    unavailable); every other failure status is final for that instance.
    """
    return 0xA700 <= status <= 0xA7FF or status == StoreStatus.RESOURCE_LIMITATION


def server_failure(status: int) -> bool:
    """Whether ``status`` blames the receiver rather than the instance: out of resources or a
    processing failure (the DICOM counterpart of an HTTP 5xx)."""
    return out_of_resources(status) or status == StoreStatus.PROCESSING_FAILURE


__all__ = ["StoreStatus", "is_warning", "out_of_resources", "server_failure", "status_text"]
