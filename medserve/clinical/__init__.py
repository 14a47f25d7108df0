"""Clinical adapters: domain objects (vital signs, DICOM, FHIR, VCF records, molecules, hospital
series…) to and from the core's values.

Scoring, mapping and writing are plain functions on values. The readers of archive formats (VCF/BCF,
SMILES/SDF libraries, CSV/Parquet series, DICOM files) stream from files, because that is what their
libraries (cyvcf2, RDKit, pyarrow, pydicom) do; nothing here opens a socket or touches the store.
"""
