"""DICOM in and out: series to tensors, synthetic studies, routing rules, SEG / SR writers."""
