"""The training loop the small example models share: AdamW with a one-cycle schedule over shuffled
minibatches for a fixed number of epochs, seeded, on ``TRAINING_THREADS`` torch threads, reporting
its progress; and ``torch_threads``, which every trained example uses to fix the thread count."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medserve.demo.models._profile import TRAINING_THREADS
from medserve.demo.models._progress import TrainingProgress

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4

    def steps(self, rows: int) -> int:
        """Optimiser steps over ``rows`` training rows (the last batch of an epoch may be short)."""
        return self.epochs * -(-rows // self.batch_size)


@contextlib.contextmanager
def torch_threads(count: int = TRAINING_THREADS) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the caller's count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(
    name: str,
    parameters: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    schedule: Schedule,
    seed: int,
) -> int:
    """Train ``parameters`` (the whole model, left in train mode) by minimising
    ``loss_function(forward(inputs[batch]), targets[batch])``; batch order from ``seed``. Returns the
    number of optimiser steps, ``schedule.steps(len(targets))``."""
    import torch

    optimiser = torch.optim.AdamW(
        parameters.parameters(), lr=schedule.learning_rate, weight_decay=schedule.weight_decay
    )
    steps = schedule.steps(len(targets))
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=schedule.learning_rate, total_steps=steps
    )
    order = torch.Generator().manual_seed(seed)
    progress = TrainingProgress(name, steps)
    parameters.train()
    with torch_threads():
        for epoch in range(schedule.epochs):
            permutation = torch.randperm(len(targets), generator=order)
            total = 0.0
            for start in range(0, len(targets), schedule.batch_size):
                batch = permutation[start : start + schedule.batch_size]
                optimiser.zero_grad()
                loss = loss_function(forward(inputs[batch]), targets[batch])
                torch.autograd.backward(loss)
                optimiser.step()
                one_cycle.step()
                value = loss.item()
                total += value * len(batch)
                progress.advance(loss=value)
            _log.debug("%s epoch %d: loss %.4f", name, epoch + 1, total / len(targets))
    return steps
