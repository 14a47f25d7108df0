"""One error tree for the whole server; each transport maps it once to its own status codes."""


class MedserveError(Exception):
    """Root of every error medserve raises on purpose."""


class ModelNotFound(MedserveError):
    """The model, or the requested version of it, is not known or not loaded."""


class ModelNotReady(MedserveError):
    """The model exists but no version of it can serve now."""


class InvalidInput(MedserveError):
    """The request is malformed or does not match the model's inputs."""


class PayloadTooLarge(MedserveError):
    """The request body is larger than the configured limit."""


class InvalidConfig(MedserveError):
    """A model's configuration file is invalid; the message names the file and the field."""


class ModelLoadError(MedserveError):
    """A model version could not be loaded; the message says why."""


class InferenceFailed(MedserveError):
    """The engine raised while running the model."""


class Unsupported(MedserveError):
    """The request asks for something this server does not do."""


class Overloaded(MedserveError):
    """The server is shutting down, its queues are full, or a request's deadline cannot be met.

    ``retry_after_s``, when set, is how long the client should wait before trying again (HTTP sends it
    as ``Retry-After``, gRPC as ``retry-after`` trailing metadata).
    """

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(MedserveError):
    """A request's deadline (its priority class's, or its ``timeout``) passed before it could run."""


class Unauthenticated(MedserveError):
    """No valid credentials: the token is missing, unknown, expired or revoked."""


class PermissionDenied(MedserveError):
    """Valid credentials whose role or model grants do not allow the action."""


class StoreUnavailable(MedserveError):
    """The database cannot be reached now."""


class JobNotFound(MedserveError):
    """No offline job has this id."""


class Conflict(MedserveError):
    """The request does not fit the resource's current state (e.g. results of an unfinished job)."""
