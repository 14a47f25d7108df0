"""Hospital operations: daily admissions and bed-occupancy series, read as forecast origins and turned
into model features (a synthetic generator, a bank-holiday calendar, a streaming table reader, the
rolling history window and the feature vector)."""
