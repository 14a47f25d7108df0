"""A job spec (``SPEC.yaml``): what to read, which model scores it, where the results go.

```yaml
name: cohort-2026 variant scores      # optional
workload: variant_scoring             # variant_scoring | virtual_screening | operations_forecast | table
source: cohort.vcf.gz                 # relative paths are relative to the spec file
model: variant_scorer                 # optional: the workload's example model by default
version: ""                           # optional: the served version
sink:
  path: out/cohort.scored.vcf.gz
  format: vcf                         # parquet | csv | hits | vcf...; by default from the extension
  top_k: 100                          # hits: how many
options: {}                           # the workload's own options
chunk_size: 4096                      # items per committed chunk
batch_size: null                      # rows per inference request; default the model's max batch size
```
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medserve.jobs.explain_columns import check_option
from medserve.values.errors import InvalidInput

#: Sink formats the runner writes itself from the result rows; workloads may add their own (``vcf``).
GENERIC_SINKS = ("parquet", "csv", "hits")

_EXTENSIONS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".vcf": "vcf",
    ".vcf.gz": "vcf",
    ".bcf": "vcf",
    ".sdf": "sdf",
}


class SinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Where the results go (written atomically when the job ends).")
    format: str | None = Field(
        default=None, description="parquet, csv, hits, vcf, ...; default: by extension."
    )
    top_k: int = Field(default=100, ge=1, le=10_000_000, description="hits: how many to keep.")
    rank_by: str | None = Field(default=None, description="hits: the column to rank by (workload default).")
    descending: bool | None = Field(default=None, description="hits: higher first (workload default).")

    def resolved_format(self) -> str:
        if self.format:
            return self.format.lower()
        name = self.path.name.lower()
        for suffix, kind in sorted(_EXTENSIONS.items(), key=lambda e: -len(e[0])):
            if name.endswith(suffix):
                return kind
        raise InvalidInput(
            f"sink {self.path}: say its format (parquet, csv, hits, ...); the extension does not tell"
        )


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=256)
    workload: str = Field(min_length=1)
    source: Path
    model: str = Field(default="", description="The model that scores the items; default: the workload's.")
    version: str = ""
    sink: SinkSpec
    options: dict[str, Any] = Field(default_factory=dict)
    chunk_size: int = Field(default=4096, ge=1, le=1_000_000)
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    explain: dict[str, Any] | None = Field(
        default=None,
        description="Attribution columns: {method, top_k, target, ...} (jobs/explain_columns.py).",
    )

    @field_validator("explain")
    @classmethod
    def _explain(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                check_option(value)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("source must name a file or folder")
        return value

    def resolved(self, base: Path) -> JobSpec:
        """The spec with relative paths made absolute against ``base`` (the spec file's folder)."""
        sink = self.sink.model_copy(update={"path": _absolute(self.sink.path, base)})
        return self.model_copy(update={"source": _absolute(self.source, base), "sink": sink})

    def document(self) -> dict[str, Any]:
        """The spec as plain JSON values (what the store keeps)."""
        document = self.model_dump(mode="json")
        if document.get("explain") is None:  # specs without it keep the digest they always had
            document.pop("explain", None)
        return document

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: equal specs, equal digests (``job run`` resumes by it)."""
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def parse_spec(document: object, *, where: str = "job spec") -> JobSpec:
    """Validate a spec document; ``InvalidInput`` names every wrong field."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{where}: expected a mapping of fields, got {type(document).__name__}")
    try:
        return JobSpec.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"{where}: {problems}") from None


def parse_spec_text(text: str, *, where: str = "job spec") -> JobSpec:
    """A spec from YAML (or JSON) text."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}: not valid YAML: {exc}") from None
    return parse_spec(document, where=where)


def load_spec(path: Path) -> JobSpec:
    """A spec file, with its relative paths resolved against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read job spec {path}: {exc.strerror or exc}") from None
    return parse_spec_text(text, where=str(path)).resolved(path.resolve().parent)
