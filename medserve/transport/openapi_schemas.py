"""Reusable pieces of the REST door's OpenAPI 3.1 document: the component schemas, the security
schemes and the answers every operation shares.

Schemas follow the Open Inference Protocol (KServe v2 REST) and Triton's extensions as medserve
speaks them; medserve's own resources (jobs, imaging, alerts) are described as their documents are
written. Free-form objects (statistics, configuration, study summaries) are objects whose fields the
operation's description names.
"""

from __future__ import annotations

from typing import Any

#: JSON Schema (draft 2020-12, OpenAPI 3.1's dialect) of each named component.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what was wrong"}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"$ref": "#/components/schemas/Datatype"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Datatype": {
        "type": "string",
        "enum": [
            "BOOL",
            "UINT8",
            "UINT16",
            "UINT32",
            "UINT64",
            "INT8",
            "INT16",
            "INT32",
            "INT64",
            "FP16",
            "FP32",
            "FP64",
            "BF16",
            "BYTES",
        ],
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "parameters": {"type": "object"},
        },
    },
    "Parameters": {
        "type": "object",
        "description": "OIP parameters: binary_data, binary_data_size, shared_memory_region, "
        "shared_memory_offset, shared_memory_byte_size, classification, priority, priority_class, "
        "timeout and others",
        "additionalProperties": {"type": ["string", "number", "integer", "boolean"]},
    },
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"$ref": "#/components/schemas/Datatype"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "data": {"description": "tensor elements, flat or nested, in row-major order"},
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
        },
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/RequestInput"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/RequestOutput"}},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"$ref": "#/components/schemas/Datatype"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "data": {"type": "array"},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/ResponseOutput"}},
        },
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "only the models that are ready"}},
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string"},
                "reason": {"type": "string"},
            },
        },
    },
    "LoadRequest": {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "properties": {
                    "config": {
                        "type": "string",
                        "description": "Triton's model configuration as JSON: max_batch_size, "
                        "dynamic_batching and instance_group apply over config.yaml for this load",
                    }
                },
                "description": "file:-prefixed artifacts answer 501",
            }
        },
    },
    "RollbackRequest": {
        "type": "object",
        "properties": {
            "version": {"type": "integer", "description": "the version to roll back to"},
            "clear": {"type": "boolean", "description": "clear a rollback: serve the newest again"},
        },
    },
    "SharedMemoryRegister": {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string", "description": "a POSIX shared memory object name, as /name"},
            "offset": {"type": "integer", "minimum": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
    "SharedMemoryStatus": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "key", "offset", "byte_size"],
            "properties": {
                "name": {"type": "string"},
                "key": {"type": "string"},
                "offset": {"type": "integer"},
                "byte_size": {"type": "integer"},
            },
        },
    },
    "TraceSetting": {
        "type": "object",
        "description": "trace_level (a list), trace_rate, trace_count, log_frequency, trace_file, "
        "trace_mode; in a POST each value may be a string, a list of strings, or null (reset)",
        "additionalProperties": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]
        },
    },
    "LogSettings": {
        "type": "object",
        "properties": {
            "log_info": {"type": "boolean"},
            "log_warning": {"type": "boolean"},
            "log_error": {"type": "boolean"},
            "log_verbose_level": {"type": "integer", "minimum": 0},
            "log_format": {"type": "string", "enum": ["default", "json"]},
            "log_file": {"type": "string", "description": "read-only"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "workload": {"type": "string"},
            "model": {"type": "string"},
            "state": {"type": "string"},
            "items_done": {"type": "integer"},
            "items_failed": {"type": "integer"},
            "items_total": {"type": ["integer", "null"]},
            "items_per_s": {"type": ["number", "null"]},
            "eta_s": {"type": ["number", "null"]},
            "error": {"type": ["string", "null"]},
            "spec": {"type": "object"},
        },
    },
    "JobFailures": {
        "type": "object",
        "required": ["failures"],
        "properties": {
            "failures": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "locator": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            }
        },
    },
    "DicomJson": {
        "type": "object",
        "description": "a DICOM JSON dataset (PS3.18 F.2): tags as keys, each {vr, Value}",
        "additionalProperties": {"type": "object"},
    },
    "Alert": {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string"}},
        "description": "an alert raised by a patient session: its id, sequence, score and acknowledgement",
    },
    "Acknowledgement": {
        "type": "object",
        "properties": {"by": {"type": "string", "minLength": 1, "description": "who acknowledges"}},
    },
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token (medserve token create); not needed with authentication off",
    },
    "console_session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "medserve_console",
        "description": "the console's session cookie (POST /console/signin); actions also need the "
        "CSRF field of the page",
    },
}


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    """A JSON request body."""
    body: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: The error answers of the REST door's status table (an operation names the ones it can give).
ERRORS: dict[str, dict[str, Any]] = {
    code: json_answer(text, ref("Error"))
    for code, text in {
        "400": "the request is wrong (the message says what)",
        "401": "no or an unknown token",
        "403": "the token's roles do not allow this",
        "404": "no such model, region, job or resource",
        "409": "the resource's state does not allow this",
        "413": "the body is larger than the door's limit",
        "415": "unsupported media type or Content-Encoding",
        "429": "overloaded: retry later",
        "501": "a protocol feature this server does not offer",
        "503": "not ready, or the model is not ready",
        "504": "the request's deadline passed",
    }.items()
}


def errors(*codes: str) -> dict[str, dict[str, Any]]:
    """The error answers ``codes`` (plus 401 and 403, which every authenticated route can give)."""
    return {code: ERRORS[code] for code in sorted({"401", "403", *codes})}
