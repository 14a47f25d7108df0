"""The audit trail: hash-chained records, journaled durably first, then stored in the database."""
