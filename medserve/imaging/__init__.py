"""Imaging workflow: DICOM ingestion, the export outbox and the destinations results are sent to."""
