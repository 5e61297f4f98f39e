"""Typed benchmark items, what loaders return and predictors receive."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from tsugiki.errors import BenchmarkError

ImageSource = Union[bytes, Path, "PIL.Image.Image"]  # noqa: F821


@dataclass(frozen=True)
class MathItem:
    """A word problem with an integer answer (MGSM)."""

    id: str
    question: str
    answer: int


@dataclass(frozen=True)
class VQAItem:
    """A question about an image with a free-text reference answer. ``image`` is kept undecoded
    (encoded bytes or a file path) until ``load_image()``."""

    id: str
    question: str
    answer: str
    image: ImageSource = field(repr=False)

    def load_image(self):
        """The image as an RGB ``PIL.Image``; an unreadable image is a BenchmarkError naming the item."""
        from PIL import Image, UnidentifiedImageError

        src = self.image
        if isinstance(src, Image.Image):
            return src.convert("RGB")
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise BenchmarkError(f"item {self.id}: image file {src} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            where = "its image bytes" if isinstance(src, bytes) else f"image file {src}"
            raise BenchmarkError(f"item {self.id}: cannot decode {where}: {e}") from None


Item = Union[MathItem, VQAItem]
