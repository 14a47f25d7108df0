"""Explanations clinicians can check: attribution methods and the explain call's core.

The method library is pure (numpy, and torch/Captum imported only inside the gradient methods) and
takes the model as an *evaluator*: an async function from a batch of perturbed inputs to the target
output of each row. The server's evaluator sends those batches through the model's own batcher in the
lowest priority class (:mod:`medserve.explanations.service`), so explanations queue behind clinical
traffic; a test or another workflow may pass any evaluator.

Modules, one concept each:

- :mod:`.target`: which output (name and class index) is explained, and reading it from outputs
- :mod:`.perturbation`: windows, baselines and the plans of perturbed inputs
- :mod:`.occlusion`: occlusion / feature ablation
- :mod:`.integrated_gradients`: Integrated Gradients by finite differences along the path
- :mod:`.gradients`: Integrated Gradients and GradCAM with Captum, for torch modules
- :mod:`.methods`: methods by name, their parameters checked (``InvalidInput`` naming the fault)
- :mod:`.checks`: completeness and rank correlation, the checks the tests run
- :mod:`.features`: feature names of tabular models
"""

from medserve.explanations.integrated_gradients import path_alphas, path_integrated_gradients
from medserve.explanations.occlusion import occlusion
from medserve.explanations.perturbation import Evaluate, normalise_window
from medserve.explanations.target import Target

__all__ = [
    "Evaluate",
    "Target",
    "normalise_window",
    "occlusion",
    "path_alphas",
    "path_integrated_gradients",
]
