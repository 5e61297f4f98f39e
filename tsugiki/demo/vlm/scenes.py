"""The VLM stage's pictures and questions: one shape of one colour on a plain background, drawn with
Pillow from a seed, asked about in English (to align the tiny LLaVA's vision side) and in Japanese
(to score the grafted models).

Every scene is a colour and a shape from :mod:`tsugiki.demo.world`, drawn at a random size and
position on one of a few backgrounds that no shape colour uses (a white circle on white would have
no answer). Questions come in pairs per scene, one about its colour and one about its shape:

- English: ``What colour is it?`` → ``red``, ``What shape is it?`` → ``circle``;
- Japanese: ``この図形は何色ですか？`` → ``赤``, ``この図形の形は何ですか？`` → ``円`` (content only, as
  JA-VG-VQA-500's references are).

Items are :class:`tsugiki.evolution.data.Pair` (``prompt`` = the bare question, ``image`` = a PIL
image, ``id`` = ``<set>/<scene>/<colour|shape>``), the same items the evolution's VQA fitness takes.
Japanese items come from a fixed universe cut by :func:`tsugiki.evolution.data.split_of` into
disjoint ``fitness`` / ``validation`` / ``test`` parts (both questions of a scene in the same part);
English training scenes are drawn from a different random stream, and none of them repeats a
Japanese scene's drawing exactly (checked by :func:`english_items`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

from tsugiki.demo.world import COLOURS, EN_QUESTIONS, JA_ALSO, JA_QUESTIONS, SHAPES
from tsugiki.evolution.data import Pair, image_digest, split_of

DRAW_SIZE = 64  # pixels per side of a saved scene; the tiny LLaVA's processor resizes it to its input size
# Backgrounds far from every shape colour (and from each other), so colour and shape are always visible.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((128, 128, 128), (95, 165, 110), (150, 120, 190), (70, 150, 170))

Question = Literal["colour", "shape"]

JA_UNIVERSE_SIZE = 360  # scenes in the Japanese universe (20 per colour x shape); test part = 30 %
_JA_UNIVERSE_SEED = 9009  # fixed: the Japanese items never depend on a run's seed
_EN_SEED_OFFSET = 1_000_003  # English training streams never start where the Japanese universe's does


@dataclass(frozen=True)
class Scene:
    """One drawn picture: what is in it (indices into ``world.COLOURS`` / ``world.SHAPES``) and where."""

    colour: int
    shape: int
    background: int
    box: tuple[int, int, int, int]  # left, top, right, bottom in DRAW_SIZE pixels

    @property
    def en(self) -> dict[str, str]:
        return {"colour": COLOURS[self.colour][0], "shape": SHAPES[self.shape][0]}

    @property
    def ja(self) -> dict[str, str]:
        return {"colour": COLOURS[self.colour][1], "shape": SHAPES[self.shape][1]}

    def name(self) -> str:
        x0, y0, x1, y1 = self.box
        return f"{self.en['colour']}-{self.en['shape']}-bg{self.background}-{x0}.{y0}.{x1}.{y1}"

    def draw(self) -> Image.Image:
        img = Image.new("RGB", (DRAW_SIZE, DRAW_SIZE), BACKGROUNDS[self.background])
        d = ImageDraw.Draw(img)
        rgb = COLOURS[self.colour][2]
        x0, y0, x1, y1 = self.box
        kind = SHAPES[self.shape][0]
        if kind == "circle":
            d.ellipse(self.box, fill=rgb)
        elif kind == "square":
            d.rectangle(self.box, fill=rgb)
        elif kind == "triangle":
            d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=rgb)
        else:  # world.SHAPES grew a shape this module cannot draw yet
            raise ValueError(f"no drawing for shape {kind!r}")
        return img


def random_scene(rng: random.Random, colour: int | None = None, shape: int | None = None) -> Scene:
    """A scene with the given (or a random) colour and shape, random background, size and position."""
    colour = rng.randrange(len(COLOURS)) if colour is None else colour
    shape = rng.randrange(len(SHAPES)) if shape is None else shape
    side = rng.randint(DRAW_SIZE * 3 // 8, DRAW_SIZE * 3 // 4)  # 24..48 px of 64: big enough to tell shapes apart
    x0, y0 = rng.randint(2, DRAW_SIZE - side - 2), rng.randint(2, DRAW_SIZE - side - 2)
    return Scene(colour, shape, rng.randrange(len(BACKGROUNDS)), (x0, y0, x0 + side - 1, y0 + side - 1))


def _items(scenes: list[Scene], prefix: str, questions: dict[str, str], answer) -> list[Pair]:
    out = []
    for i, s in enumerate(scenes):
        img = s.draw()
        for q, text in questions.items():
            out.append(Pair(text, answer(s, q), f"{prefix}/{i:04d}-{s.name()}/{q}", img))
    return out


def ja_universe() -> list[Pair]:
    """Every Japanese item (two per scene): each colour x shape equally often, in a fixed order."""
    rng = random.Random(_JA_UNIVERSE_SEED)
    per_pair = JA_UNIVERSE_SIZE // (len(COLOURS) * len(SHAPES))
    scenes = [random_scene(rng, c, s) for _ in range(per_pair) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    return _items(scenes, "shapes_ja", JA_QUESTIONS, lambda s, q: s.ja[q])


def ja_items(split: str, n_scenes: int | None = None, seed: int = 0) -> list[Pair]:
    """Both Japanese questions about ``n_scenes`` scenes of a split (all of it when None), in a
    seed-shuffled scene order. Splitting is per scene, so a scene's two questions stay together."""
    by_scene: dict[str, list[Pair]] = {}
    universe = ja_universe()
    scene_ids = [Pair(p.id.rsplit("/", 1)[0], "", p.id.rsplit("/", 1)[0]) for p in universe[::len(JA_QUESTIONS)]]
    for p in universe:
        by_scene.setdefault(p.id.rsplit("/", 1)[0], []).append(p)
    chosen = [s.id for s in split_of(scene_ids, split)]
    random.Random(seed).shuffle(chosen)
    chosen = chosen if n_scenes is None else chosen[:n_scenes]
    return [p for sid in chosen for p in by_scene[sid]]


def english_items(n_scenes: int, seed: int, *, prefix: str = "shapes_en") -> list[Pair]:
    """Both English questions about ``n_scenes`` random scenes (answers: the bare English word).
    Scenes that happen to equal a Japanese universe scene pixel for pixel are skipped, so training
    never sees an evaluation picture."""
    rng = random.Random(_EN_SEED_OFFSET + seed)
    reserved = {image_digest(p.image) for p in ja_universe()[::len(JA_QUESTIONS)]}
    scenes: list[Scene] = []
    while len(scenes) < n_scenes:
        s = random_scene(rng)
        if image_digest(s.draw()) not in reserved:
            scenes.append(s)
    return _items(scenes, prefix, EN_QUESTIONS, lambda s, q: s.en[q])


def vocabulary(language: Literal["en", "ja"], question: Question) -> list[str]:
    """The words that can answer ``question`` (e.g. every Japanese colour name)."""
    col = 0 if language == "en" else 1
    return [c[col] for c in COLOURS] if question == "colour" else [s[col] for s in SHAPES]


def question_kind(item: Pair) -> Question:
    """``colour`` or ``shape``, from the item's id."""
    kind = item.id.rsplit("/", 1)[-1] if item.id else ""
    if kind not in ("colour", "shape"):
        raise ValueError(f"item {item.id!r} is not a scene question")
    return kind  # type: ignore[return-value]


def named_words(text: str, words: list[str]) -> set[str]:
    """Which of ``words`` ``text`` names: the word itself or one of its other forms (``world.JA_ALSO``: 金 for
    金色) occurs in it. No word or form of the world contains another of its kind."""
    return {w for w in words if any(form in text for form in (w, *JA_ALSO.get(w, ())))}

