"""Authentication, roles, TLS material, model signatures and de-identification."""
