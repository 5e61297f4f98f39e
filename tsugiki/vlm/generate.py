"""Japanese VQA generation with a LLaVA-family model: prompt templates, the seed's generation
settings, batched over images with left padding, behind a small predictor interface.

    predictor = VQAPredictor.from_pretrained("out/evovlm")
    answers = predictor.predict([image, ...], ["この画像には何が写っていますか？", ...])

The ``ja-shisa-vqa`` template and the defaults (5 beams, repetition penalty 1.5, at most 512 new
tokens, no sampling) are those Sakana AI's EvoVLM-JP evaluation used (evolutionary-model-merge,
`evomerge/models/prompt_templates.py` and `configs/vlm/evovlm-v1-jp-7b.yaml`): the question follows
``<image>\\n`` inside a Llama-2 chat turn with a Japanese system prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from tsugiki.errors import CheckpointError
from tsugiki.progress import progress_bar
from tsugiki.registry import Registry

JA_SYSTEM_PROMPT = "あなたは役立つ、偏見がなく、検閲されていないアシスタントです。与えられた画像を下に、質問に答えてください。"

TEMPLATES: Registry[str] = Registry("prompt template")
TEMPLATES.register("ja-shisa-vqa", "[INST] <<SYS>>\n" + JA_SYSTEM_PROMPT + "\n<</SYS>>\n\n{input} [/INST]")
TEMPLATES.register("llava-mistral", "[INST] {input} [/INST]")


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = 5
    repetition_penalty: float = 1.5
    max_new_tokens: int = 512
    do_sample: bool = False


def build_prompt(question: str, template: str = "ja-shisa-vqa", image_token: str = "<image>") -> str:
    """The template (a registered name or a ``{input}`` string) around ``<image>\\n{question}``."""
    text = TEMPLATES.get(template) if "{input}" not in template else template
    return text.format(input=f"{image_token}\n{question}")


class VQAPredictor:
    """Answers questions about images: ``predict(images, questions) -> list[str]``.

    Batches of `batch_size` are left-padded (generation continues every row from its last real
    token), so batched answers equal one-at-a-time answers."""

    def __init__(self, model: Any, processor: Any, *, template: str = "ja-shisa-vqa", batch_size: int = 4,
                 settings: GenerationSettings = GenerationSettings(), progress: bool = True):
        self.model = model.eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.template = template
        self.batch_size = batch_size
        self.settings = settings
        self.progress = progress
        build_prompt("", template)  # an unknown template name fails here, not mid-benchmark

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None, **kwargs) -> "VQAPredictor":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from tsugiki.hf_load import from_pretrained

        try:
            model = from_pretrained(AutoModelForImageTextToText, path, **({"dtype": dtype} if dtype else {})).to(device)
            processor = from_pretrained(AutoProcessor, path)
        except (OSError, ValueError, KeyError) as e:  # transformers' ways of saying "not this kind of model"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: cannot load as an image-text model with its processor: {first}") from None
        return cls(model, processor, **kwargs)

    def prompt(self, question: str) -> str:
        return build_prompt(question, self.template, getattr(self.processor, "image_token", "<image>"))

    def predict(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        answers: list[str] = []
        starts = range(0, len(images), self.batch_size)
        for i in progress_bar(starts, desc="VQA", unit="batch", disable=not self.progress, leave=False):
            answers += self._generate(images[i:i + self.batch_size], questions[i:i + self.batch_size])
        return answers

    @torch.inference_mode()
    def _generate(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        inputs = self.processor(text=[self.prompt(q) for q in questions], images=list(images), padding=True,
                                return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        out = self.model.generate(**inputs, **asdict(self.settings), pad_token_id=tok.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
