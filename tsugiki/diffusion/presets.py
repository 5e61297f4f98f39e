"""Named sampling presets: scheduler, steps and guidance that belong together.

Distilled few-step SDXL models (SDXL-Turbo, SDXL-Lightning, the 4-step EvoSDXL-JP) are sampled with
guidance 0 (no classifier-free guidance: the distillation baked it in) and "trailing" timestep spacing,
so the first step starts at the last training timestep (pure noise) instead of `leading`'s 999 - k.

    preset = get_preset("lightning-4step")
    apply_preset(pipe, preset)                   # swaps the scheduler in place (same config otherwise)
    images = pipe(prompt, **preset.call_kwargs()).images
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tsugiki.registry import Registry


@dataclass(frozen=True)
class SamplingPreset:
    name: str
    scheduler: str  # a diffusers scheduler class name
    steps: int
    guidance_scale: float
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def call_kwargs(self) -> dict[str, Any]:
        return {"num_inference_steps": self.steps, "guidance_scale": self.guidance_scale}


PRESETS: Registry[SamplingPreset] = Registry("sampling preset")
for _p in (
    SamplingPreset("sdxl-30step", "EulerDiscreteScheduler", 30, 5.0, {"timestep_spacing": "leading"},
                   "SDXL base defaults: Euler, 30 steps, guidance 5"),
    SamplingPreset("lightning-4step", "EulerDiscreteScheduler", 4, 0.0, {"timestep_spacing": "trailing"},
                   "SDXL-Lightning / EvoSDXL-JP 4-step: Euler, trailing timesteps, no guidance"),
    SamplingPreset("lightning-2step", "EulerDiscreteScheduler", 2, 0.0, {"timestep_spacing": "trailing"},
                   "SDXL-Lightning 2-step"),
    SamplingPreset("turbo-1step", "EulerAncestralDiscreteScheduler", 1, 0.0, {"timestep_spacing": "trailing"},
                   "SDXL-Turbo: one ancestral Euler step, trailing, no guidance"),
    SamplingPreset("turbo-4step", "EulerAncestralDiscreteScheduler", 4, 0.0, {"timestep_spacing": "trailing"},
                   "SDXL-Turbo, 4 steps"),
):
    PRESETS.register(_p.name, _p)
del _p


def get_preset(name: str) -> SamplingPreset:
    return PRESETS.get(name)


def apply_preset(pipe: Any, preset: SamplingPreset) -> Any:
    """Replace `pipe.scheduler` by the preset's scheduler built from the current scheduler's config."""
    import diffusers

    cls = getattr(diffusers, preset.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **preset.scheduler_overrides)
    return pipe
