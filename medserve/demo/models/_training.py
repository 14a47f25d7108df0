"""The training loop the small example models share: AdamW with a one-cycle schedule over shuffled
minibatches, seeded, optionally on one thread (tiny steps only lose time to threads on a busy machine)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4
    single_thread: bool = False


def fit(
    name: str,
    parameters: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    schedule: Schedule,
    seed: int,
) -> None:
    """Train ``parameters`` (the whole model, left in train mode) by minimising
    ``loss_function(forward(inputs[batch]), targets[batch])``; batch order from ``seed``."""
    import torch

    optimiser = torch.optim.AdamW(
        parameters.parameters(), lr=schedule.learning_rate, weight_decay=schedule.weight_decay
    )
    steps = schedule.epochs * -(-len(targets) // schedule.batch_size)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=schedule.learning_rate, total_steps=steps
    )
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    if schedule.single_thread:
        torch.set_num_threads(1)
    parameters.train()
    try:
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
                total += loss.item() * len(batch)
            _log.debug("%s epoch %d: loss %.4f", name, epoch + 1, total / len(targets))
    finally:
        torch.set_num_threads(threads)
