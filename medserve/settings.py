"""Server settings: defaults < config file (YAML) < ``MEDSERVE_*`` environment < command line.

Every field is documented here; ``docs/CONFIGURATION.md`` lists them (a test keeps the two in step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from medserve.scheduling.priority import (
    DEFAULT_CLASS_NAME,
    DEFAULT_CLASS_SPECS,
    PriorityClasses,
    build_classes,
)
from medserve.settings_file import FileSource
from medserve.values.errors import InvalidConfig
from medserve.values.suggestions import did_you_mean

#: gRPC's own ceiling on a message (its length options are 32-bit signed integers): 2 GiB - 1.
GRPC_MAX_MESSAGE_BYTES = (1 << 31) - 1


class PriorityClassSetting(BaseModel):
    """One priority class of the ``priority_classes`` setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Class name, as in the priority_class request parameter.")
    priority: int = Field(ge=1, description="Priority level: 1 is the most urgent (Triton's semantics).")
    deadline_ms: float | None = Field(
        default=None, gt=0, description="Deadline from arrival; none: no deadline (offline work)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSERVE_", extra="forbid")

    _file_values: ClassVar[dict[str, Any]] = {}

    repository: Path = Field(
        default=Path("model_repository"),
        description="Model repository folder: <repository>/<model>/config.yaml and "
        "<repository>/<model>/<version>/<artifact>.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP and gRPC servers bind to.")
    http_port: int = Field(
        default=8000, ge=0, le=65535, description="Port of the HTTP/REST server (Open Inference Protocol)."
    )
    grpc_port: int = Field(
        default=8001,
        ge=-1,
        le=65535,
        description="Port of the gRPC server (inference.GRPCInferenceService); -1 turns gRPC off.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body (HTTP) or message (gRPC) accepted; larger ones get "
        "HTTP 413 / RESOURCE_EXHAUSTED before they are read whole.",
    )
    max_json_request_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest JSON an inference door decodes: a JSON infer body, the JSON header of a "
        "binary-extension request, the JSON-only REST requests and a WebSocket message. Decoding JSON "
        "takes many times its size in memory, so this is well below max_request_bytes (the smaller of "
        "the two applies); larger ones get HTTP 413 naming this setting. Tensors sent in binary count "
        "against max_request_bytes only.",
    )
    explain_max_perturbations: int = Field(
        default=20000,
        ge=1,
        le=10_000_000,
        description="Most model evaluations one explanation may take (perturbed inputs of occlusion and "
        "finite-difference Integrated Gradients, Captum's path steps); a request needing more gets "
        "HTTP 400 / INVALID_ARGUMENT naming the count (docs/EXPLANATIONS.md).",
    )
    http_max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest HTTP request line plus header block; a larger one is answered 431 and the "
        "connection closed before the rest is read.",
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a client may take to send a request's line and headers once it has begun "
        "(slowloris); past it the connection is closed.",
    )
    http_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request body may go without a byte arriving; past it the connection is "
        "closed (a slow or stalled upload).",
    )
    http_keepalive_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="How long an idle keep-alive HTTP connection (or one that never sends) stays open.",
    )
    max_connections: int = Field(
        default=512,
        ge=1,
        description="Most open HTTP connections; beyond it new ones are closed at once and a warning is "
        "logged (once a minute) so the file descriptors are never used up.",
    )
    grpc_max_message_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=GRPC_MAX_MESSAGE_BYTES,
        description="Largest gRPC message served (up to 2 GiB - 1, gRPC's own ceiling); None: "
        "max_request_bytes. A larger one, up to twice this, fails that request with RESOURCE_EXHAUSTED "
        "and a ModelStreamInfer stream stays open; past twice this gRPC ends the call.",
    )
    grpc_max_concurrent_streams: int = Field(
        default=100, ge=1, description="Most concurrent gRPC streams (calls) on one HTTP/2 connection."
    )
    grpc_max_unread_responses: int = Field(
        default=64,
        ge=1,
        description="Most requests of one gRPC ModelStreamInfer stream in flight or answered but not yet "
        "read by the client; beyond it the stream is not read until the client reads.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On shutdown, how long in-flight requests may take to finish before they are cancelled.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Logging level of the server."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log line format: text, or json (one object a line with time, level, logger, message, "
        "request_id, trace_id and principal; never a token or patient data).",
    )
    trace_level: Literal["OFF", "TIMESTAMPS", "TENSORS"] = Field(
        default="OFF",
        description="Triton trace level at start-up: OFF traces only requests whose client sent a sampled "
        "W3C traceparent; TIMESTAMPS also traces one request in trace_rate; TENSORS also records the "
        "traced requests' tensors (shapes, first values: patient data, warned at start). Changed at run "
        "time through /v2/trace/setting.",
    )
    trace_rate: int = Field(
        default=1000, ge=1, description="With trace_level on: trace one request in this many."
    )
    otlp_traces_endpoint: str = Field(
        default="",
        description="OpenTelemetry OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); empty: "
        "spans are not exported (the default).",
    )
    load_models: bool = Field(default=True, description="Load every model in the repository at start-up.")
    data_dir: Path = Field(
        default=Path("medserve_data"),
        description="Folder for the server's own durable data: the SQLite database medserve.db (unless "
        "database_url is set), the audit journal audit/, the pseudonym key pseudonym.key (keep it secret "
        "and backed up) and the alert log alerts.jsonl.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the store (audit trail, tokens, lineage), e.g. "
        "postgresql+psycopg://user:password@host/db; empty: SQLite in data_dir.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="DEVELOPMENT ONLY: serve everyone without credentials (logged loudly at start-up). "
        "Health endpoints are always open.",
    )
    audit_disabled: bool = Field(
        default=False,
        description="DEVELOPMENT/BENCHMARK ONLY: write no audit records (logged loudly at start-up).",
    )
    audit_fsync: bool = Field(
        default=False,
        description="Write each audit record to the disk (O_DSYNC) before answering, so even a power cut "
        "loses nothing; false: records reach the operating system before the answer (a crash of the "
        "server loses nothing) and the disk within about 0.2 s.",
    )
    tls_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain) of the server; with tls_keyfile turns on TLS."
    )
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle that client certificates (mTLS) must chain to."
    )
    tls_client_auth: Literal["none", "optional", "required"] = Field(
        default="none",
        description="Client certificates: none, optional (a registered certificate authenticates like a "
        "token) or required (the TLS handshake fails without one).",
    )
    trusted_signing_keys: list[Path] = Field(
        default_factory=list,
        description="ed25519 public keys (PEM) whose signatures over model artifact digests are trusted.",
    )
    require_signatures: bool = Field(
        default=False,
        description="Refuse to load a model version whose artifact has no valid signature "
        "(<artifact>.sig) by a trusted key.",
    )
    monitoring_window_s: float = Field(
        default=300.0,
        gt=0,
        description="Model monitoring: length of the time windows over which output distributions and "
        "input statistics are kept and compared with the reference window.",
    )
    monitoring_max_per_s: int = Field(
        default=50,
        ge=0,
        description="Model monitoring: at most this many responses a second per model enter the "
        "distributions (a uniform-in-time sample; 0 turns monitoring off).",
    )
    monitoring_share_s: float = Field(
        default=10.0,
        ge=0,
        description="Model monitoring: every this many seconds the replica writes its monitoring state "
        "to the store, where the monitoring endpoint of any replica merges it with the others' "
        "(0: not shared, each replica answers for its own traffic).",
    )
    alert_webhooks: dict[str, str] = Field(
        default_factory=dict,
        description="Alert destinations: name -> URL of a webhook that gets each ward alert as a JSON "
        "POST (Idempotency-Key: the alert id), delivered once by the fleet under leases; retried with "
        "backoff while the receiver is down.",
    )
    monitor_max_sessions: int = Field(
        default=1000,
        ge=1,
        description="Patient monitor: most open patient streams; further sequence starts are refused.",
    )
    monitor_idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Patient monitor: a stream idle this long is closed; a reconnect within it resumes.",
    )
    monitor_vitals_max_age_s: float = Field(
        default=900.0,
        gt=0,
        description="Patient monitor: NEWS2 is not computed from vital signs older than this.",
    )
    monitor_ecg_model: str = Field(
        default="ecg_rhythm_classifier",
        description="Patient monitor: model classifying 10 s ECG windows (skipped when not loaded).",
    )
    dicom_port: int = Field(
        default=11112,
        ge=-1,
        le=65535,
        description="Port of the DICOM Storage SCP (C-ECHO, C-STORE); -1 turns the DIMSE door off.",
    )
    dicom_ae_title: str = Field(default="MEDSERVE", description="AE title of the DICOM Storage SCP.")
    dicom_allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate with the SCP, each granted every model (as "
        "'*' in dicom_calling_aets). With both empty, no AE may associate. In the environment, a JSON list.",
    )
    dicom_calling_aets: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Calling AE titles allowed to associate with the SCP, each mapped to the models its "
        "principal (aet:<title>, role service) is granted; ['*']: every model. Instances whose series "
        "would be routed to a model the AE is not granted are refused. Unknown AEs are rejected at "
        "association and logged with the AE and the peer. In the environment, a JSON object.",
    )
    dicom_tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the DICOM Storage SCP; with dicom_tls_keyfile the DIMSE "
        "door speaks only TLS (TLS 1.2 or later, BCP 195 cipher suites; PS3.15 Secure Transport "
        "Connection Profile). Plain TCP associations are refused.",
    )
    dicom_tls_keyfile: Path | None = Field(
        default=None, description="PEM private key (unencrypted) of dicom_tls_certfile."
    )
    dicom_tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle; when set, every DICOM peer must present a client certificate that "
        "chains to it, or the TLS handshake fails (the calling AE title is still checked).",
    )
    dicom_quiet_time_s: float = Field(
        default=5.0,
        gt=0,
        description="A series is complete, and is routed, once no instance of it has arrived for this long.",
    )
    imaging_config: Path | None = Field(
        default=None,
        description="YAML file with the imaging pipelines, routing rules and export destinations; "
        "none: the example pipelines and a folder destination <data_dir>/exports.",
    )
    imaging_workers: int = Field(
        default=1, ge=1, description="Series processed at once (each one's images or patches are batched)."
    )
    stow_max_request_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Largest STOW-RS request body; it is spooled to disk, so memory holds one instance.",
    )

    jobs_concurrency: int = Field(
        default=1, ge=0, le=64, description="Offline jobs the server runs at once (0: it runs none)."
    )
    jobs_priority_class: str = Field(
        default="",
        description="Priority class of the offline jobs' inference requests; empty: the least urgent class, "
        "so real-time traffic keeps its deadlines.",
    )
    jobs_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the server looks for queued jobs (also those submitted by the CLI).",
    )
    jobs_retry_s: float = Field(
        default=30.0, gt=0, description="How often a job paused by a full disk tries its write again."
    )
    replica_id: str = Field(
        default="",
        description="This replica's id among replicas sharing one database (letters, digits, ._:@-); "
        "empty: made once and kept in <data_dir>/replica-id. Names its leases, its audit chain and its "
        "registry row.",
    )
    replica_heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often the replica renews its row in the replica registry."
    )
    lease_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a lease on a unit of work (job, export) outlives its holder's last heartbeat: "
        "a killed replica's work is taken over by another within this time (renewed every third of it).",
    )
    storage_dir: Path | None = Field(
        default=None,
        description="Storage shared by every replica (a shared filesystem): received DICOM instances, "
        "results, exports folder and the parts of running jobs. None: data_dir.",
    )
    hub_enabled: bool = Field(
        default=False, description="Act as a hub: publish signed manifests to edge groups (docs/EDGE.md)."
    )
    hub_signing_key: Path | None = Field(
        default=None, description="ed25519 private key (PEM) the hub signs its manifests with."
    )
    hub_edges: dict[str, str] = Field(
        default_factory=dict,
        description="Edges of this hub: principal name (token name or client certificate CN) -> group.",
    )
    edge_hub_url: str = Field(
        default="", description="Act as an edge of the hub at this URL (http(s)://host:port); '' : no hub."
    )
    edge_group: str = Field(default="", description="The edge group whose manifest this edge serves.")
    edge_token: str = Field(default="", description="Bearer token this edge presents to its hub.")
    edge_tls_certfile: Path | None = Field(
        default=None, description="Client certificate for mTLS to the hub."
    )
    edge_tls_keyfile: Path | None = Field(default=None, description="Private key of edge_tls_certfile.")
    edge_tls_ca: Path | None = Field(default=None, description="CA that signed the hub's certificate.")
    edge_sync_interval_s: float = Field(default=60.0, gt=0, description="Seconds between manifest pulls.")
    edge_uplink_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between uplink rounds (longer, with back-off, while away)."
    )
    edge_max_backlog: int = Field(
        default=10000,
        ge=1,
        description="Pending uplink items before sketches are shed (never audit or alerts).",
    )
    edge_offload_models: list[str] = Field(
        default_factory=list,
        description="Models whose requests this edge sends to its hub when its own admission control "
        "refuses them (deadline out of reach, queue full); off for every model by default.",
    )
    cluster_address: str = Field(
        default="", description="Join this Ray cluster (host:port or 'auto'); '': engines on this machine."
    )
    cluster_resources: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='Custom Ray resources per model, e.g. {"ct": {"npu": 1}}.'
    )
    cluster_autoscaling: dict[str, tuple[int, int]] = Field(
        default_factory=dict,
        description="[min, max] replicas per model, scaled by Ray Serve on queue length.",
    )
    cluster_load_timeout_s: float = Field(
        default=120.0, gt=0, description="How long a model load waits for its cluster replicas to run."
    )
    console_enabled: bool = Field(default=True, description="Serve the operator console at /console.")
    console_idle_timeout_s: float = Field(
        default=900.0, gt=0, description="A console session without a request for this long is signed out."
    )

    priority_classes: list[PriorityClassSetting] = Field(
        default_factory=lambda: [PriorityClassSetting(**spec) for spec in DEFAULT_CLASS_SPECS],
        description="Priority classes of inference requests, each {name, priority, deadline_ms}: priority 1 "
        "is the most urgent and always goes first (strict precedence), earliest deadline first within a "
        "class; a request that cannot meet its deadline is refused at once (HTTP 503 with Retry-After). "
        "Requests pick one with the parameter priority (level) or priority_class (name). In the "
        "environment, a JSON list.",
    )
    default_priority_class: str = Field(
        default=DEFAULT_CLASS_NAME,
        description="Priority class of a request that names none (or sends priority 0).",
    )
    cross_model_wait_s: float = Field(
        default=0.5,
        ge=0,
        description="Precedence across models on one device: how long at most a batch waits while another "
        "model has more urgent requests queued for that device or executing on it (0: models do not wait "
        "for each other).",
    )

    @model_validator(mode="after")
    def _priority_classes_consistent(self) -> Settings:
        try:
            self.priority_table()
            if self.jobs_priority_class and self.jobs_priority_class not in {
                c.name for c in self.priority_classes
            }:
                raise ValueError(f"jobs_priority_class '{self.jobs_priority_class}' is not a priority class")
        except ValueError as exc:
            raise ValueError(f"priority_classes / default_priority_class: {exc}") from None
        return self

    def jobs_class(self) -> str:
        """The priority class offline jobs run in (the configured one, or the least urgent)."""
        if self.jobs_priority_class:
            return self.jobs_priority_class
        return max(self.priority_classes, key=lambda c: c.priority).name

    def priority_table(self) -> PriorityClasses:
        """The configured priority classes (ValueError when names or levels repeat, or the default is
        not one of them)."""
        return build_classes((c.model_dump() for c in self.priority_classes), self.default_priority_class)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, FileSource(settings_cls, cls._file_values))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides (flags).

    A bad value is named by where it came from: the flag (``--http-port``), the environment variable
    (``MEDSERVE_HTTP_PORT``) or the file and its key; an unknown key gets the nearest known one.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidConfig(f"{config_file}: cannot read settings: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidConfig(f"{config_file}: expected a mapping of settings")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    given = {k: v for k, v in overrides.items() if v is not None}
    Settings._file_values = values
    try:
        return Settings(**given)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")  # typos first
        problems = "; ".join(_problem(error, given, config_file) for error in errors)
        raise InvalidConfig(problems) from None
    except SettingsError as exc:  # an environment variable's value is not the JSON its field needs
        field = str(exc).split('"')[1] if '"' in str(exc) else ""
        variable = f"MEDSERVE_{field.upper()}" if field else "a MEDSERVE_ variable"
        raise InvalidConfig(f"{variable}: not valid JSON (this setting takes a JSON value)") from None
    finally:
        Settings._file_values = {}


def _problem(error: Any, given: dict[str, Any], config_file: Path | None) -> str:
    """One validation error, said with its source: flag, environment variable or settings file."""
    location = [str(part) for part in error["loc"]]
    field = location[0] if location else ""
    rest = ".".join(location[1:])
    if error["type"] == "extra_forbidden":
        key = location[-1]
        # The only nested settings are the priority classes: ``priority_classes.<index>.<key>``.
        known = list((Settings if len(location) == 1 else PriorityClassSetting).model_fields)
        where = f"{config_file}: " if config_file is not None else ""
        inside = f" in {'.'.join(location[:-1])}" if len(location) > 1 else ""
        return f"{where}unknown key '{key}'{inside}{did_you_mean(key, known)}"
    message = str(error["msg"])
    if field in given:
        return f"--{field.replace('_', '-')} {given[field]!r}: {message}"
    variable = f"MEDSERVE_{field.upper()}"
    if field and os.environ.get(variable) is not None:
        return f"{variable}={os.environ[variable]!r}" + (f" ({rest})" if rest else "") + f": {message}"
    if field and config_file is not None:
        return f"{config_file}: {'.'.join(location)}: {message}"
    return (f"{'.'.join(location)}: " if location else "settings: ") + message
