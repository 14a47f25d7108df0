"""Gradient methods for torch models, with Captum: Integrated Gradients and GradCAM.

Both take ``forward``: a torch function from a batch ``(n, *shape)`` to the explained output of each
row ``(n,)`` (the target picked), built by the caller around the served module. torch and Captum are
imported here, inside the functions (optional packages: the ``examples`` extra installs them).

- Integrated Gradients (Captum's ``IntegratedGradients``): exact gradients along the path from the
  baseline, ``steps`` points of ``rule``; completeness holds up to the quadrature's error.
- GradCAM (Selvaraju et al., 2017; Captum's ``LayerGradCam``): the gradient-weighted activations of
  one convolutional layer (default: the last), ReLU'd and upsampled (bilinear) to the input's size.
  It is coarse (the layer's resolution) and class-discriminative; it is *not* complete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medserve.explanations.integrated_gradients import path_alphas
from medserve.explanations.perturbation import baseline_array
from medserve.values.errors import InvalidInput

Forward = Callable[[Any], Any]
"""A torch function: a batch of inputs -> the explained output per row."""


def captum_integrated_gradients(
    forward: Forward,
    x: np.ndarray,
    *,
    baseline: object = 0.0,
    steps: int = 32,
    rule: str = "riemann_trapezoid",
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Captum Integrated Gradients of ``x`` (one sample, no batch dimension), float64, ``x``'s shape."""
    import torch  # lazy: an optional package
    from captum.attr import IntegratedGradients  # lazy: an optional package

    path_alphas(steps, rule)  # checks steps and rule, naming the fault
    reference = baseline_array(baseline, x)
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32)[None]).to(device)
    baselines = torch.as_tensor(reference.astype(np.float32)[None]).to(device)
    method = IntegratedGradients(forward)
    with torch.enable_grad():
        attributions = method.attribute(
            inputs, baselines=baselines, n_steps=steps, method=rule, internal_batch_size=batch_size
        )
    result: np.ndarray = attributions.detach().to("cpu", torch.float64).numpy()[0]
    return result


def _is_conv(sub: Any, kinds: tuple[type, ...]) -> bool:
    """A convolution: a torch conv module, or a leaf of an unflattened ``torch.export`` program whose
    graph calls a convolution (its layers are ``InterpreterModule`` objects, not ``Conv2d``)."""
    if isinstance(sub, kinds):
        return True
    graph = getattr(sub, "graph", None)
    if graph is None or any(True for _ in sub.children()):
        return False
    return any(node.op == "call_function" and "conv" in str(node.target) for node in graph.nodes)


def conv_layers(module: Any) -> list[str]:
    """Names of the module's convolutional layers, in definition order."""
    import torch  # lazy: an optional package

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [name for name, sub in module.named_modules() if name and _is_conv(sub, kinds)]


def find_layer(module: Any, name: str | None) -> tuple[str, Any]:
    """The convolutional layer called ``name`` (dotted, as ``named_modules`` gives it), or the last."""
    convs = conv_layers(module)
    if not convs:
        raise InvalidInput("grad_cam needs a convolutional layer; this model has none")
    if name is None:
        name = convs[-1]
    if name not in convs:
        shown = ", ".join(convs[-8:])
        raise InvalidInput(f"parameter 'layer' {name!r} is not a convolutional layer of the model ({shown})")
    return name, dict(module.named_modules())[name]


def captum_grad_cam(
    module: Any, forward: Forward, x: np.ndarray, *, layer: str | None = None, device: str = "cpu"
) -> tuple[np.ndarray, str]:
    """GradCAM of ``x`` (one sample ``(C, H, W)`` or ``(C, L)``), float64, ``x``'s shape (the map is
    upsampled to the spatial size and repeated over channels), and the layer's name."""
    import torch  # lazy: an optional package
    from captum.attr import LayerAttribution, LayerGradCam  # lazy: an optional package

    if np.ndim(x) < 2:
        raise InvalidInput(
            f"grad_cam needs an input with channels and spatial dimensions; got shape {list(np.shape(x))}"
        )
    name, sub = find_layer(module, layer)
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32)[None]).to(device)
    with torch.enable_grad():
        cam = LayerGradCam(forward, sub).attribute(inputs, relu_attributions=True)
    mode = "bilinear" if np.ndim(x) == 3 else ("linear" if np.ndim(x) == 2 else "trilinear")
    up = LayerAttribution.interpolate(cam.detach(), tuple(np.shape(x)[1:]), interpolate_mode=mode)
    result = up.to("cpu", torch.float64).numpy()[0]  # (1 or C', *spatial)
    if result.shape[0] != np.shape(x)[0]:
        result = np.repeat(result.sum(axis=0, keepdims=True), np.shape(x)[0], axis=0)
    return result, name
