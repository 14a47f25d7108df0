"""InferenceService: the one dataplane every door (HTTP, gRPC, ...) calls.

(Interface fixed first; bodies are filled in by the registry/scheduler work.)
"""
