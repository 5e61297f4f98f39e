"""The demo's one training loop: the LM siblings' LoRA adapters, the VLM's vision alignment and the
SDXL stage's VAE, UNets and judge all train through :func:`train_steps`.

Seeding stays with each caller, where it draws its model and data (``torch.manual_seed`` and the
generators it passes in), so the shipped weights rebuild bit for bit (``tsugiki demo --rebuild-models``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from tsugiki.progress import progress_bar


def train_steps(loss_at: Callable[[int], torch.Tensor], opt: torch.optim.Optimizer, *, steps: int, desc: str,
                progress: bool = False, clip: Optional[float] = None, params: Sequence[torch.nn.Parameter] = (),
                lr_at: Optional[Callable[[int], float]] = None, scheduler=None,
                on_step: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """``steps`` optimiser steps on ``loss_at(step)`` (which draws its own batch); ``lr_at`` sets the
    learning rate before each step, ``scheduler`` steps after it, ``clip`` caps the gradient norm of
    ``params``. Returns the loss of every step; the bar shows the mean of the last ten."""
    losses: list[float] = []
    bar = progress_bar(range(steps), desc=desc, unit="step", disable=not progress)
    for step in bar:
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
