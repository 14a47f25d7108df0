"""Clinical adapters: domain objects (vital signs, DICOM, FHIR…) to and from the core's values.

Everything here is pure: plain functions and small state machines on values, no I/O.
"""
