"""The safe subset of a MONAI bundle's inference config that the ``monai_bundle`` runtime evaluates.

The ``preprocessing`` and ``postprocessing`` sections (a ``Compose`` or a list) are read with
``monai.bundle.ConfigParser``; only the transforms listed in ``PREPROCESSING``/``POSTPROCESSING`` are
built (dictionary versions are applied to the tensor their ``keys`` name). Everything else is skipped
with a reason, as is anything with a Python expression (``$...``), a macro (``%...``) or a nested
component in its arguments; ``network_def`` is checked against ``network_component`` unless the bundle
is trusted. monai and torch are imported lazily, when a bundle is loaded: they are optional engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medserve.values.errors import ModelLoadError

#: preprocessing transforms applied (array name -> its dictionary version's name)
PREPROCESSING: tuple[str, ...] = (
    "ScaleIntensityRange",
    "ScaleIntensityRangePercentiles",
    "ScaleIntensity",
    "NormalizeIntensity",
    "ThresholdIntensity",
    "ShiftIntensity",
    "EnsureType",
    "ToTensor",
)
#: postprocessing transforms applied
POSTPROCESSING: tuple[str, ...] = ("Activations", "AsDiscrete")
#: inferers used
INFERERS: tuple[str, ...] = ("SimpleInferer", "SlidingWindowInferer")

#: dictionary-transform arguments that may hold one value per key
_PER_KEY_ARGS = {
    "Activations": ("sigmoid", "softmax", "other"),
    "AsDiscrete": ("argmax", "to_onehot", "threshold", "rounding"),
}

_SKIP_REASONS = {
    "LoadImage": "reads files; send the decoded image array",
    "SaveImage": "writes files; the prediction is returned instead",
    "EnsureChannelFirst": "send the image channel first",
    "AddChannel": "send the image channel first",
    "Invert": "inverts spatial preprocessing that is not applied",
    "CopyItems": "key-based bookkeeping",
}


class Refused(Exception):
    """A config value outside the subset evaluated without ``trust_bundle_code``."""


def literal(parser: Any, value: Any, components: Callable[[str], bool] | None = None, depth: int = 0) -> Any:
    """``value`` with ``@`` references followed; refuses expressions, macros and unlisted components."""
    if depth > 16:
        raise Refused("references nest too deeply")
    if isinstance(value, str):
        if value.startswith("$"):
            raise Refused("uses a Python expression")
        if value.startswith("%"):
            raise Refused("uses a macro")
        if value.startswith("@"):
            missing = object()
            target = parser.get(value[1:], missing)
            if target is missing:
                raise Refused(f"refers to '{value[1:]}', which is not in the config")
            return literal(parser, target, components, depth + 1)
        return value
    if isinstance(value, list):
        return [literal(parser, v, components, depth + 1) for v in value]
    if isinstance(value, dict):
        target = value.get("_target_")
        if target is not None and (components is None or not components(str(target))):
            raise Refused(f"has a nested component ({target})")
        return {k: literal(parser, v, components, depth + 1) for k, v in value.items()}
    return value


def short_name(target: str) -> str:
    """``ScaleIntensityRanged`` for ``monai.transforms.ScaleIntensityRanged`` (other targets as given)."""
    for prefix in ("monai.transforms.", "monai.inferers."):
        if target.startswith(prefix):
            return target.rsplit(".", 1)[-1]
    return target


@dataclass(slots=True)
class Plan:
    """Transforms per tensor name, and the record shown in model metadata."""

    steps: dict[str, list[tuple[str, Callable[[Any], Any]]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def record(self) -> dict[str, list[str]]:
        applied = [f"{label}({name})" for name, steps in self.steps.items() for label, _ in steps]
        return {"applied": applied, "skipped": list(self.skipped)}


def _follow(parser: Any, value: Any) -> Any:
    """Follow ``@`` references at the top of ``value`` (not inside it); refuse expressions and macros."""
    for _ in range(16):
        if not isinstance(value, str) or not value.startswith(("@", "$", "%")):
            return value
        if not value.startswith("@"):
            raise Refused("uses a Python expression" if value.startswith("$") else "uses a macro")
        missing = object()
        target = parser.get(value[1:], missing)
        if target is missing:
            raise Refused(f"refers to '{value[1:]}', which is not in the config")
        value = target
    raise Refused("references nest too deeply")


_NOT_SUPPORTED = "not in the supported subset (send data already in the form it produces)"


def _section_items(parser: Any, section: str, plan: Plan) -> list[tuple[str, Any]]:
    """The raw items of a ``Compose`` (or list) section, references at their top followed."""
    try:
        raw = _follow(parser, parser.get(section, None))
        if raw is None:
            return []
        if isinstance(raw, dict):
            if short_name(str(raw.get("_target_", ""))) != "Compose":
                plan.skipped.append(f"{section}: {raw.get('_target_')} is not a Compose")
                return []
            transforms = _follow(parser, raw.get("transforms", []))
        else:
            transforms = raw
    except Refused as exc:
        plan.skipped.append(f"{section}: the transform list {exc}")
        return []
    if not isinstance(transforms, list):
        plan.skipped.append(f"{section}: 'transforms' is not a list")
        return []
    items: list[tuple[str, Any]] = []
    for i, item in enumerate(transforms):
        where = f"{section}#transforms#{i}"
        try:
            items.append((where, _follow(parser, item)))
        except Refused as exc:
            plan.skipped.append(f"{where}: {exc}")
    return items


def build_plan(parser: Any, section: str, allowed: tuple[str, ...], names: list[str], source: Path) -> Plan:
    """The ``allowed`` transforms of ``section`` for the tensors ``names``; the rest skipped, with why."""
    import monai.transforms  # lazy import of an optional engine (monai)

    plan = Plan(steps={name: [] for name in names})
    for where, item in _section_items(parser, section, plan):
        if not isinstance(item, dict) or "_target_" not in item:
            plan.skipped.append(f"{where}: not a transform component")
            continue
        label = short_name(str(item["_target_"]))
        dictionary = label.endswith("d") and label[:-1] in allowed
        array_name = label[:-1] if dictionary else label
        if item.get("_disabled_") in (True, "true", "True"):
            plan.skipped.append(f"{label}: disabled in the bundle")
            continue
        if array_name not in allowed:
            base = label[:-1] if label.endswith("d") else label
            plan.skipped.append(f"{label}: {_SKIP_REASONS.get(base, _NOT_SUPPORTED)}")
            continue
        if item.get("_mode_", "default") != "default":
            plan.skipped.append(f"{label}: _mode_ '{item['_mode_']}' is not supported")
            continue
        try:
            args = literal(parser, {k: v for k, v in item.items() if not k.startswith("_")})
        except Refused as exc:
            plan.skipped.append(f"{label}: {exc}")
            continue
        if dictionary:
            given = args.pop("keys", None)
            args.pop("allow_missing_keys", None)
            keys = [given] if isinstance(given, str) else [str(k) for k in given or []]
            targets = [k for k in keys if k in names]
            for arg in _PER_KEY_ARGS.get(array_name, ()):
                value = args.get(arg)
                if isinstance(value, list | tuple) and len(value) == len(keys) and targets:
                    args[arg] = value[keys.index(targets[0])]
            if not targets:
                plan.skipped.append(f"{label}: keys {keys} name none of {names}")
                continue
        elif len(names) == 1:
            targets = list(names)
        else:
            plan.skipped.append(f"{label}: an array transform, and there are several tensors {names}")
            continue
        try:
            transform = getattr(monai.transforms, array_name)(**args)
        except Exception as exc:  # a bad argument in the bundle: say which transform
            raise ModelLoadError(f"{source}: {where} ({label}) cannot be built: {exc}") from None
        for name in targets:
            plan.steps[name].append((label, transform))
    return plan


def network_component(target: str) -> bool:
    """Whether ``network_def`` may use ``target`` untrusted: a ``monai.networks`` or ``torch.nn`` class."""
    import monai.networks.blocks  # lazy import of optional engines (monai, torch)
    import monai.networks.layers
    import monai.networks.nets
    import torch.nn

    if target.startswith(("monai.networks.", "torch.nn.")):
        return True
    modules = (monai.networks.nets, monai.networks.blocks, monai.networks.layers, torch.nn)
    return "." not in target and any(isinstance(getattr(m, target, None), type) for m in modules)


def build_inferer(parser: Any, root: Path) -> tuple[Any, str]:
    """The bundle's ``inferer`` when it is a supported one with literal arguments, and its label (or
    ``none (why)``: the network is then called directly)."""
    import monai.inferers  # lazy import of an optional engine (monai)

    raw = parser.get("inferer", None)
    if raw is None:
        return None, "none"
    label = short_name(str(raw.get("_target_", ""))) if isinstance(raw, dict) else str(raw)
    if label not in INFERERS:
        return None, f"none ({label} is not supported; the network is called directly)"
    try:
        args = literal(parser, {k: v for k, v in raw.items() if not k.startswith("_")})
        inferer = getattr(monai.inferers, label)(**args)
    except Refused as exc:
        return None, f"none ({label} {exc}; the network is called directly)"
    except Exception as exc:  # a bad argument in the bundle
        raise ModelLoadError(f"{root}: inferer {label} cannot be built: {exc}") from None
    return inferer, label
