"""Deterministic training of the demo's tiny language models (one thread, bit-for-bit reproducible).

Next-token prediction with the loss on the response only (the prompt part of each example is context),
AdamW with linear warm-up and cosine decay. One CPU thread makes every reduction run in a fixed order,
so the same arguments give the same weights on any machine with the same torch build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tsugiki.threads import torch_threads


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0


def encode_examples(tok, examples: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` padded to the longest example: BOS + prompt + response + EOS, labels -100
    on BOS, the prompt and padding."""
    rows, labels = [], []
    for prompt, response in examples:
        p = tok(prompt, add_special_tokens=False).input_ids if prompt else []
        r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append([tok.bos_token_id] + p + r)
        labels.append([-100] * (1 + len(p)) + r)
    width = max(map(len, rows))
    pad = tok.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab


def train(model, tok, examples: list[tuple[str, str]], settings: TrainSettings, *, desc: str = "train",
          progress: bool = True) -> list[float]:
    """Train ``model`` in place; returns the loss per step."""
    ids, labels = encode_examples(tok, examples)
    losses = []
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(settings.seed)
        torch.manual_seed(settings.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                betas=(0.9, 0.98), foreach=False)
        order = torch.randperm(len(ids), generator=gen)
        pos = 0
        model.train()
        bar = tqdm(range(settings.steps), desc=desc, disable=not progress, leave=False, unit="step")
        for step in bar:
            if pos + settings.batch_size > len(order):
                order, pos = torch.randperm(len(ids), generator=gen), 0
            idx = order[pos:pos + settings.batch_size]
            pos += settings.batch_size
            batch, lab = ids[idx], labels[idx]
            width = int((lab != -100).nonzero()[:, 1].max()) + 1  # trim the batch's padding columns
            batch, lab = batch[:, :width], lab[:, :width]
            for group in opt.param_groups:
                group["lr"] = _lr(settings, step)
            loss = model(input_ids=batch, attention_mask=(batch != tok.pad_token_id).long(), labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        model.eval()
    return losses


def _lr(s: TrainSettings, step: int) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
