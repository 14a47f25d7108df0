"""DICOM PS3.15 Table E.1-1, Basic Profile column, for the attributes this server is likely to see.

Action codes (PS3.15 E.1.1): D dummy value, Z zero length, X remove, K keep (sequences are
cleaned recursively), U replace with a consistent UID, and the compound codes Z/D, X/Z, X/D,
X/Z/D and X/Z/U*, which pick one of their parts by the attribute's Type in the IOD.

The de-identifier has no per-IOD Type tables, so :func:`resolve` picks the part that keeps
*every* IOD valid, which is the rightmost one: a dummy value is allowed where the standard asks
for removal (Type 3) or zero length (Type 2), and is required for Type 1. Dummy values carry
nothing identifying. Sequences are the exception, since no dummy item can be built without
knowing the sequence's macro:

=========  ==================  ===========================================================
code       non-sequence        sequence
=========  ==================  ===========================================================
Z/D        D                   Z (no items)
X/Z        Z                   Z (no items)
X/D        D                   Z (no items)
X/Z/D      D                   Z (no items)
X/Z/U*     U (a UI element)    U*: items kept, the profile applied to them, UIDs replaced
D          D                   Z (no items)
=========  ==================  ===========================================================

Attributes a Retain Longitudinal Temporal Information with Full Dates Option row marks K are
those of VR DA, DT or TM plus Timezone Offset From UTC; Patient's Birth Date and Birth Time and
Last Menstrual Date describe the patient rather than the events and stay protected.

Curve (50xx) and overlay (60xx) groups, whose data and comments the table removes, are removed
as whole groups so no overlay module is left without its data.
"""

from __future__ import annotations

from enum import StrEnum

from pydicom.datadict import dictionary_VR, tag_for_keyword

from medserve.values.errors import InvalidConfig


class Action(StrEnum):
    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    UID = "U"
    CLEAN_ITEMS = "U*"  # keep the sequence, de-identify its items (their UIDs replaced)


#: Keyword -> Basic Profile action code, from PS3.15 Table E.1-1.
BASIC_PROFILE: dict[str, str] = {
    "AccessionNumber": "Z",
    "AcquisitionComments": "X",
    "AcquisitionContextSequence": "X/Z",
    "AcquisitionDate": "X/Z",
    "AcquisitionDateTime": "X/Z/D",
    "AcquisitionDeviceProcessingDescription": "X/D",
    "AcquisitionProtocolDescription": "X",
    "AcquisitionTime": "X/Z",
    "ActualHumanPerformersSequence": "X",
    "AdditionalPatientHistory": "X",
    "AdmissionID": "X",
    "AdmittingDate": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingTime": "X",
    "Allergies": "X",
    "Arbitrary": "X",
    "AuthorObserverSequence": "X",
    "BranchOfService": "X",
    "CassetteID": "X",
    "CommentsOnThePerformedProcedureStep": "X",
    "ConcatenationUID": "U",
    "ConfidentialityConstraintOnPatientDataDescription": "X",
    "ConsultingPhysicianName": "X",
    "ConsultingPhysicianIdentificationSequence": "X",
    "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X",
    "ContentDate": "Z/D",
    "ContentSequence": "X",
    "ContentTime": "Z/D",
    "ContextGroupExtensionCreatorUID": "U",
    "ContrastBolusAgent": "Z/D",
    "ContributionDescription": "X",
    "CountryOfResidence": "X",
    "CreatorVersionUID": "U",
    "CurrentPatientLocation": "X",
    "CurveDate": "X",
    "CurveTime": "X",
    "CustodialOrganizationSequence": "X",
    "DataSetTrailingPadding": "X",
    "DerivationDescription": "X",
    "DetectorID": "X/D",
    "DeviceSerialNumber": "X/Z/D",
    "DeviceUID": "U",
    "DigitalSignatureUID": "X",
    "DigitalSignaturesSequence": "X",
    "DimensionOrganizationUID": "U",
    "DischargeDiagnosisDescription": "X",
    "DistributionAddress": "X",
    "DistributionName": "X",
    "DoseReferenceUID": "U",
    "EndAcquisitionDateTime": "X/D",
    "EthnicGroup": "X",
    "ExpectedCompletionDateTime": "X",
    "FailedSOPInstanceUIDList": "U",
    "FiducialUID": "U",
    "FillerOrderNumberImagingServiceRequest": "Z",
    "FrameComments": "X",
    "FrameOfReferenceUID": "U",
    "GantryID": "X",
    "GeneratorID": "X",
    "GraphicAnnotationSequence": "D",
    "HumanPerformerName": "X",
    "HumanPerformerOrganization": "X",
    "IconImageSequence": "X",
    "IdentifyingComments": "X",
    "ImageComments": "X",
    "ImagePresentationComments": "X",
    "ImagingServiceRequestComments": "X",
    "Impressions": "X",
    "InstanceCoercionDateTime": "X",
    "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D",
    "InstanceCreatorUID": "U",
    "InstitutionAddress": "X",
    "InstitutionCodeSequence": "X/Z/D",
    "InstitutionName": "X/Z/D",
    "InstitutionalDepartmentName": "X",
    "InsurancePlanIdentification": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X",
    "InterpretationApproverSequence": "X",
    "InterpretationAuthor": "X",
    "InterpretationDiagnosisDescription": "X",
    "InterpretationIDIssuer": "X",
    "InterpretationRecorder": "X",
    "InterpretationText": "X",
    "InterpretationTranscriber": "X",
    "IrradiationEventUID": "U",
    "IssuerOfAdmissionID": "X",
    "IssuerOfAdmissionIDSequence": "X",
    "IssuerOfPatientID": "X",
    "IssuerOfPatientIDQualifiersSequence": "X",
    "IssuerOfServiceEpisodeID": "X",
    "LargePaletteColorLookupTableUID": "U",
    "LastMenstrualDate": "X",
    "MAC": "X",
    "MACParametersSequence": "X",
    "MedicalAlerts": "X",
    "MedicalRecordLocator": "X",
    "MilitaryRank": "X",
    "ModifiedAttributesSequence": "X",
    "ModifiedImageDescription": "X",
    "ModifyingDeviceID": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "NamesOfIntendedRecipientsOfResults": "X",
    "ObservationUID": "U",
    "Occupation": "X",
    "OperatorIdentificationSequence": "X",
    "OperatorsName": "X/Z/D",
    "OrderCallbackPhoneNumber": "X",
    "OrderCallbackTelecomInformation": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "OriginalAttributesSequence": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "OverlayDate": "X",
    "OverlayTime": "X",
    "PaletteColorLookupTableUID": "U",
    "ParticipantSequence": "X",
    "PatientAddress": "X",
    "PatientAge": "X",
    "PatientBirthDate": "Z",
    "PatientBirthName": "X",
    "PatientBirthTime": "X",
    "PatientComments": "X",
    "PatientID": "Z",
    "PatientInstitutionResidence": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "PatientMotherBirthName": "X",
    "PatientName": "Z",
    "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X",
    "PatientReligiousPreference": "X",
    "PatientSetupUID": "U",
    "PatientSex": "Z",
    "PatientSexNeutered": "X/Z",
    "PatientSize": "X",
    "PatientState": "X",
    "PatientTelecomInformation": "X",
    "PatientTelephoneNumbers": "X",
    "PatientTransportArrangements": "X",
    "PatientWeight": "X",
    "PerformedLocation": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndDateTime": "X",
    "PerformedProcedureStepEndTime": "X",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartDateTime": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedStationAETitle": "X",
    "PerformedStationGeographicLocationCodeSequence": "X",
    "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "PerformingPhysicianName": "X",
    "PersonAddress": "X",
    "PersonIdentificationCodeSequence": "D",
    "PersonName": "D",
    "PersonTelecomInformation": "X",
    "PersonTelephoneNumbers": "X",
    "PhysicianApprovingInterpretation": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z",
    "PlateID": "X",
    "PreMedication": "X",
    "PregnancyStatus": "X",
    "PresentationDisplayCollectionUID": "U",
    "PresentationSequenceCollectionUID": "U",
    "ProtocolName": "X/D",
    "ReasonForTheImagingServiceRequest": "X",
    "ReasonForRequestedProcedureCodeSequence": "X",
    "ReasonForStudy": "X",
    "ReasonForTheRequestedProcedure": "X",
    "ReferencedDigitalSignatureSequence": "X",
    "ReferencedFrameOfReferenceUID": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "ReferencedImageSequence": "X/Z/U*",
    "ReferencedObservationUIDTrial": "U",
    "ReferencedPatientAliasSequence": "X",
    "ReferencedPatientPhotoSequence": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "ReferencedSOPInstanceMACSequence": "X",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U",
    "ReferencedStudySequence": "X/Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianTelephoneNumbers": "X",
    "RegionOfResidence": "X",
    "RelatedFrameOfReferenceUID": "U",
    "RequestAttributesSequence": "X",
    "RequestedContrastAgent": "X",
    "RequestedProcedureComments": "X",
    "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X",
    "RequestedProcedureLocation": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ResponsibleOrganization": "X",
    "ResponsiblePerson": "X",
    "ResultsComments": "X",
    "ResultsDistributionListSequence": "X",
    "ResultsIDIssuer": "X",
    "ReviewerName": "X/Z",
    "ScheduledHumanPerformersSequence": "X",
    "ScheduledPatientInstitutionResidence": "X",
    "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledPerformingPhysicianName": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepEndDate": "X",
    "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepID": "X",
    "ScheduledProcedureStepLocation": "X",
    "ScheduledProcedureStepStartDate": "X",
    "ScheduledProcedureStepStartTime": "X",
    "ScheduledStationAETitle": "X",
    "ScheduledStationGeographicLocationCodeSequence": "X",
    "ScheduledStationName": "X",
    "ScheduledStationNameCodeSequence": "X",
    "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X",
    "SeriesDate": "X/D",
    "SeriesDescription": "X",
    "SeriesInstanceUID": "U",
    "SeriesTime": "X/D",
    "ServiceEpisodeDescription": "X",
    "ServiceEpisodeID": "X",
    "SmokingStatus": "X",
    "SOPInstanceUID": "U",
    "SourceImageSequence": "X/Z/U*",
    "SourceManufacturer": "X",
    "SourceSerialNumber": "X/Z",
    "SpecialNeeds": "X",
    "SpecimenUID": "U",
    "StationName": "X/Z/D",
    "StorageMediaFileSetUID": "U",
    "StudyComments": "X",
    "StudyDate": "Z",
    "StudyDescription": "X",
    "StudyID": "Z",
    "StudyIDIssuer": "X",
    "StudyInstanceUID": "U",
    "StudyTime": "Z",
    "SynchronizationFrameOfReferenceUID": "U",
    "TargetUID": "U",
    "TemplateExtensionCreatorUID": "U",
    "TemplateExtensionOrganizationUID": "U",
    "TextComments": "X",
    "TextString": "X",
    "TimezoneOffsetFromUTC": "X",
    "TopicAuthor": "X",
    "TopicKeywords": "X",
    "TopicSubject": "X",
    "TopicTitle": "X",
    "TrackingUID": "U",
    "TransactionUID": "U",
    "UDISequence": "X",
    "UID": "U",
    "UniqueDeviceIdentifier": "X",
    "VerifyingObserverIdentificationCodeSequence": "Z",
    "VerifyingObserverName": "D",
    "VerifyingObserverSequence": "D",
    "VerifyingOrganization": "D",
    "VisitComments": "X",
    "XRayDetectorID": "D",
    "XRayDetectorLabel": "X",
    "XRaySourceID": "D",
}

#: Protected by the Basic Profile even under the Full Dates Option: they date the patient.
PATIENT_TEMPORAL = frozenset({"PatientBirthDate", "PatientBirthTime", "LastMenstrualDate"})
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
#: Curve and overlay repeating groups, removed whole.
REMOVED_GROUP_RANGES = ((0x5000, 0x50FF), (0x6000, 0x60FF))

_CODES = frozenset({"D", "Z", "X", "K", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})


def _build() -> dict[int, str]:
    table: dict[int, str] = {}
    for keyword, code in BASIC_PROFILE.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise InvalidConfig(f"de-identification table: unknown DICOM keyword '{keyword}'")
        if code not in _CODES:
            raise InvalidConfig(f"de-identification table: '{keyword}' has unknown action '{code}'")
        table[tag] = code
    return table


#: Tag -> Basic Profile action code.
TABLE: dict[int, str] = _build()
_PATIENT_TEMPORAL_TAGS = frozenset(int(tag_for_keyword(k) or 0) for k in PATIENT_TEMPORAL)
_TIMEZONE_TAG = int(tag_for_keyword("TimezoneOffsetFromUTC") or 0)


def in_removed_group(tag: int) -> bool:
    """Whether ``tag`` lies in a curve (50xx) or overlay (60xx) repeating group."""
    group = tag >> 16
    return any(low <= group <= high and group % 2 == 0 for low, high in REMOVED_GROUP_RANGES)


def is_retained_temporal(tag: int, vr: str) -> bool:
    """Whether the Full Dates Option keeps this attribute (dates, times, timezone offset)."""
    if tag in _PATIENT_TEMPORAL_TAGS:
        return False
    return vr in TEMPORAL_VRS or tag == _TIMEZONE_TAG


def dictionary_vr(tag: int) -> str:
    """The data dictionary VR of a public tag; "" when unknown."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def resolve(code: str, is_sequence: bool, vr: str = "") -> Action:
    """The one action a table code stands for here (see the module docstring)."""
    if code == "X/Z/U*":
        return Action.CLEAN_ITEMS if is_sequence else Action.UID if vr == "UI" else Action.ZERO
    if code == "X":
        return Action.REMOVE
    if code == "K":
        return Action.KEEP
    if code == "U":
        return Action.UID
    if is_sequence or code in ("Z", "X/Z"):
        return Action.ZERO  # for sequences also every D: no dummy item without the sequence's macro
    return Action.DUMMY  # D, and the rightmost part of Z/D, X/D and X/Z/D
