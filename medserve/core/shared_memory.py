"""System shared memory regions (Triton's shared memory extension), owned by the principal who
registered them.

A client on the same host puts a tensor in a POSIX shared memory object (``shm_open(key)``: the file
``/dev/shm/<key>``), registers ``byte_size`` bytes of it from ``offset`` under a region ``name``, then
sends requests whose inputs and outputs name the region, an offset in it and a byte size instead of
carrying the bytes. Every access is bounds-checked against the registered window; a region is seen,
used and unregistered only by the principal who registered it (another principal's region of the same
name is "not registered" to them). Unregistering unmaps; :meth:`SystemSharedMemory.close` unmaps
every region at shutdown.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medserve.values.access import Action, Caller
from medserve.values.datatypes import from_raw_bytes, raw_bytes, serialize_bytes_tensor
from medserve.values.errors import InvalidInput
from medserve.values.shared_memory_ref import BYTE_SIZE, OFFSET, REGION, RegionRef, region_of
from medserve.values.types import InferenceRequest, InferenceResponse, Tensor

#: Where POSIX shared memory objects live on Linux.
SHM_ROOT = Path("/dev/shm")

_KEY = re.compile(r"/?[A-Za-z0-9._-]{1,200}")


@dataclass(slots=True)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    owner: str
    mapping: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The registered regions of this server, keyed by (owner, name)."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[tuple[str, str], _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int, caller: Caller) -> None:
        """Map ``byte_size`` bytes from ``offset`` of the shared memory object ``key`` as ``name``."""
        caller.principal.require(Action.INFER)
        if not name:
            raise InvalidInput("shared memory region needs a name")
        if not _KEY.fullmatch(key) or key.strip("/") in (".", ".."):
            raise InvalidInput(f"shared memory key '{key[:80]}' is not a POSIX shared memory name")
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(f"region '{name}': offset must be ≥ 0 and byte_size > 0")
        owner = caller.principal.name
        with self._lock:
            if (owner, name) in self._regions:
                raise InvalidInput(f"shared memory region '{name}' is already registered")
            path = self._root / key.lstrip("/")
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError as exc:
                raise InvalidInput(
                    f"region '{name}': cannot open shared memory key '{key}': {exc.strerror}"
                ) from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidInput(
                        f"region '{name}': offset {offset} + byte_size {byte_size} passes the end of "
                        f"'{key}' ({size} bytes)"
                    )
                mapping = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[(owner, name)] = _Region(name, key, offset, byte_size, owner, mapping)

    def status(self, name: str, caller: Caller) -> list[dict[str, Any]]:
        """The caller's regions (only ``name`` when given; an unknown ``name`` is refused)."""
        caller.principal.require(Action.READ)
        if name:
            return [self._get(name, caller).status()]
        with self._lock:
            owned = [r for (owner, _), r in self._regions.items() if owner == caller.principal.name]
        return [r.status() for r in sorted(owned, key=lambda r: r.name)]

    def unregister(self, name: str, caller: Caller) -> None:
        """Unmap the caller's region ``name``, or all the caller's regions when ``name`` is empty."""
        caller.principal.require(Action.INFER)
        owner = caller.principal.name
        with self._lock:
            names = [name] if name else [n for (o, n) in self._regions if o == owner]
            for region_name in names:
                region = self._regions.pop((owner, region_name), None)
                if region is not None:
                    region.mapping.close()

    def close(self) -> None:
        """Unmap every region (server shutdown)."""
        with self._lock:
            regions, self._regions = list(self._regions.values()), {}
        for region in regions:
            region.mapping.close()

    def _get(self, name: str, caller: Caller) -> _Region:
        region = self._regions.get((caller.principal.name, name))
        if region is None:
            raise InvalidInput(f"shared memory region '{name}' is not registered")
        return region

    def _window(self, ref: RegionRef, caller: Caller, where: str) -> tuple[_Region, int]:
        region = self._get(ref.name, caller)
        if ref.offset + ref.byte_size > region.byte_size:
            raise InvalidInput(
                f"{where}: offset {ref.offset} + byte_size {ref.byte_size} passes the end of region "
                f"'{ref.name}' ({region.byte_size} bytes)"
            )
        return region, region.offset + ref.offset

    # -- requests ---------------------------------------------------------------------------
    def resolve_inputs(self, request: InferenceRequest, caller: Caller) -> None:
        """Give every input that names a region its data, copied out of the region."""
        for index, tensor in enumerate(request.inputs):
            ref = region_of(tensor.parameters, f"input '{tensor.name}'")
            if ref is None:
                continue
            region, start = self._window(ref, caller, f"input '{tensor.name}'")
            data = bytes(region.mapping[start : start + ref.byte_size])
            array = from_raw_bytes(memoryview(data), tensor.datatype, tensor.shape, tensor.name)
            parameters = {k: v for k, v in tensor.parameters.items() if k not in (REGION, OFFSET, BYTE_SIZE)}
            request.inputs[index] = Tensor(tensor.name, tensor.datatype, tensor.shape, array, parameters)

    def output_refs(self, request: InferenceRequest, caller: Caller) -> dict[str, RegionRef]:
        """The outputs the request wants written to regions, checked before the model runs."""
        refs: dict[str, RegionRef] = {}
        for output in request.outputs:
            ref = region_of(output.parameters, f"output '{output.name}'")
            if ref is not None:
                self._window(ref, caller, f"output '{output.name}'")
                refs[output.name] = ref
        return refs

    def place_outputs(self, response: InferenceResponse, refs: dict[str, RegionRef], caller: Caller) -> None:
        """Write the outputs named in ``refs`` to their regions; they leave the response's body."""
        for index, tensor in enumerate(response.outputs):
            ref = refs.get(tensor.name)
            if ref is None:
                continue
            where = f"output '{tensor.name}'"
            region, start = self._window(ref, caller, where)
            data = (
                serialize_bytes_tensor(tensor.data)
                if tensor.datatype == "BYTES"
                else raw_bytes(tensor.data, tensor.datatype)
            )
            if len(data) > ref.byte_size:
                raise InvalidInput(
                    f"{where} needs {len(data)} bytes but its shared memory window holds {ref.byte_size}"
                )
            region.mapping[start : start + len(data)] = bytes(data)
            parameters = {**tensor.parameters, REGION: ref.name, OFFSET: ref.offset, BYTE_SIZE: len(data)}
            response.outputs[index] = Tensor(
                tensor.name, tensor.datatype, tensor.shape, np.empty(0, np.uint8), parameters
            )
