"""The benchmarks' predictor interface over `VQAPredictor`: ``VLMPredictor.predict(items) -> list[str]``.

An item needs a ``question`` and an image: ``load_image()`` (as `tsugiki.benchmarks.items.VQAItem`
has) or an ``image`` attribute holding a PIL image.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from tsugiki.vlm.generate import GenerationSettings, VQAPredictor


def _image(item: Any):
    load = getattr(item, "load_image", None)
    return load() if callable(load) else item.image


class VLMPredictor:
    def __init__(self, vqa: VQAPredictor, name: str):
        self.vqa = vqa
        self.name = name

    @classmethod
    def from_pretrained(cls, model: str | Path, *, name: str | None = None, device: str = "cpu",
                        dtype: str | torch.dtype | None = None, template: str = "ja-shisa-vqa", batch_size: int = 4,
                        **generation: Any) -> "VLMPredictor":
        """`generation` overrides `GenerationSettings` fields (num_beams, repetition_penalty, max_new_tokens, do_sample)."""
        settings = replace(GenerationSettings(), **{k: v for k, v in generation.items() if v is not None})
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        vqa = VQAPredictor.from_pretrained(model, device=device, dtype=dtype, template=template, batch_size=batch_size,
                                           settings=settings, progress=False)  # the benchmark runner shows progress
        return cls(vqa, name or Path(str(model)).name)

    @property
    def batch_size(self) -> int:
        return self.vqa.batch_size

    def settings(self) -> dict:
        return {"template": self.vqa.template, **asdict(self.vqa.settings)}

    def predict(self, items: Sequence[Any]) -> list[str]:
        return self.vqa.predict([_image(it) for it in items], [it.question for it in items])
