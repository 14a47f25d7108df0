"""The foundation: values every layer shares (errors, tensors and datatypes, digests, principals and
roles, the audit event). It imports nothing else of medserve, so anything may import it."""
