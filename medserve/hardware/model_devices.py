"""The ``devices`` of a model's ``config.yaml``, checked against this machine when the model loads.

Every listed device must be one the model's runtime can use here; otherwise the load fails with
``InvalidConfig`` naming what this machine offers that runtime. The first listed device becomes
``runtime_options.device`` unless the options name one, which must then be among the listed ones.
Devices are discovered once per process (engines are imported for it only when a model lists devices).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from medserve.hardware.devices import Discovery, canonical_device_id, discover_devices, resolve_device
from medserve.hardware.profile import device_option
from medserve.values.errors import InvalidConfig


@functools.lru_cache(maxsize=1)
def machine_discovery() -> Discovery:
    """This machine's devices, discovered on first use and then kept for the process."""
    return discover_devices()


def options_for_devices(
    model: str,
    runtime: str,
    devices: Sequence[str],
    options: dict[str, Any],
    discovery: Discovery | None = None,
) -> dict[str, Any]:
    """``options`` with ``device`` set from ``devices`` (see the module); raises ``InvalidConfig``."""
    discovery = machine_discovery() if discovery is None else discovery
    where = f"{model}/config.yaml: field 'devices'"
    resolved = []
    for requested in devices:
        try:
            resolved.append(resolve_device(requested, runtime, discovery))
        except InvalidConfig as exc:
            raise InvalidConfig(f"{where}: {exc}") from None
    if "device" not in options:
        return {**options, "device": device_option(runtime, resolved[0].id)}
    named = canonical_device_id(str(options["device"]), runtime)
    ids = [d.id for d in resolved]
    if named not in ids:
        raise InvalidConfig(
            f"{where}: runtime_options.device '{options['device']}' is not among the devices {ids}"
        )
    return dict(options)
