"""Loading an SDXL UNet, and the cheap UNet fitness ``unet_output_mse`` (for tiny models; no images).

``unet_output_mse``: minus the mean squared difference between the candidate UNet's noise prediction
and a reference UNet's (a source named by ``reference``) on ``samples`` fixed random inputs (latents,
timesteps, text embeddings, time ids drawn from ``seed``). Its maximum, 0, is reached by any candidate
whose UNet equals the reference's. It is registered with the other built-ins in
:data:`tsugiki.evolution.fitness.FITNESS` (which imports this module, so this one does not import it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from tsugiki.errors import EvolutionError
from tsugiki.hf_quiet import hf_progress_bars_off


def load_unet(path: str | Path, device: str = "cpu"):
    from diffusers import UNet2DConditionModel  # diffusers loads in seconds: only for SDXL searches

    from tsugiki.hf_load import from_pretrained

    p = Path(path)
    with hf_progress_bars_off(diffusers=True, errors_only=True):  # no "accelerate not installed" notice per worker
        return from_pretrained(UNet2DConditionModel, p / "unet" if (p / "unet").is_dir() else p).to(device).eval()


# ------------------------------------------------------------------------------ fitness
_REFERENCE: dict[tuple, torch.Tensor] = {}


def unet_inputs(unet, samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed random SDXL UNet inputs for ``unet``'s config (float32, on its device)."""
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    text_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    dev = next(unet.parameters()).device
    out = {"sample": torch.randn(samples, c.in_channels, size, size, generator=g),
           "timestep": torch.randint(1, 1000, (samples,), generator=g),
           "encoder_hidden_states": torch.randn(samples, 8, c.cross_attention_dim, generator=g),
           "text_embeds": torch.randn(samples, text_dim, generator=g),
           "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(samples, 1)}
    return {k: v.to(dev) for k, v in out.items()}


@torch.no_grad()
def unet_forward(unet, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}).sample


def unet_output_mse(ctx: Any, data: Any = None, *, reference: str, samples: int = 2, seed: int = 0) -> float:
    """``-mean((candidate(x) - reference(x))^2)`` over fixed random UNet inputs (see the module doc);
    ``ctx`` is an :class:`~tsugiki.evolution.fitness.EvalContext`."""
    paths = ctx.extra.get("paths") or {}
    if reference not in paths:
        raise EvolutionError(f"unet_output_mse: reference {reference!r} is not a source ({', '.join(paths)})")
    inputs = unet_inputs(ctx.model, int(samples), int(seed))
    key = (str(paths[reference]), int(samples), int(seed), str(inputs["sample"].device))
    if key not in _REFERENCE:
        _REFERENCE[key] = unet_forward(load_unet(paths[reference], str(inputs["sample"].device)), inputs)
    got = unet_forward(ctx.model, inputs)
    return -float(((got.float() - _REFERENCE[key].float()) ** 2).mean())
