"""Prompt -> answer pairs for the built-in fitness functions, and the fitness/validation split rule.

A data spec (the ``data:`` of ``fitness`` or ``validation`` in an evolve config) is one of::

    {pairs: [{prompt: "3+4=", answer: "7"}, ...]}                inline
    {file: pairs.jsonl, limit: 100}                            one JSON object per line, same keys
    {generator: arithmetic, split: fitness, n: 40, seed: 0}    built in, offline (see GENERATORS)
    {mgsm: ja, source: optional, limit: 250}                   MGSM (tsugiki.benchmarks.loaders.load_mgsm;
                                                               the vendored file by default), ids mgsm_ja/ROW

Generators enumerate a fixed universe, shuffle it with a fixed seed and cut it into three disjoint
parts: ``fitness`` (first 40%), ``validation`` (next 30%) and ``test`` (last 30%); ``n`` items are then
drawn from the part with ``seed``. ``generator`` may be a list: items alternate between generators.
Items may also carry an ``id`` and an ``image`` (JSONL/inline keys ``id``, ``question`` as an alias of
``prompt``, ``image``: a path relative to the file), as the benchmark-backed fitness functions need.
Whatever the source, :func:`check_disjoint` refuses a validation or test set that shares an id or a
text (the prompt; with the image's digest for VQA items) with the fitness set (the search must never see validation data; Akiba et al. 2024, arXiv:2403.13187, report
held-out scores for the same reason).

The built-in universes mirror the corpora the tiny-model factory fine-tunes its siblings on
(``tsugiki.factory.lm``): Japanese sentence templates, one-digit sums and word copying.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from tsugiki.benchmarks.items import VQAItem
from tsugiki.errors import BenchmarkError, EvolutionError, TsugikiError
from tsugiki.factory.lm import JA_PLACES, JA_SUBJECTS, JA_VERBS
from tsugiki.registry import Registry

SPLITS = {"fitness": (0.0, 0.4), "validation": (0.4, 0.7), "test": (0.7, 1.0)}
_UNIVERSE_SEED = 20240320  # fixed: the split of a universe never depends on a run's seed


@dataclass(frozen=True)
class Pair:
    """One item: ``prompt`` (a question for the benchmark-backed fitness functions), ``answer``, an
    optional ``id`` and, for VQA, an ``image`` (a file path, encoded bytes or a PIL image)."""

    prompt: str
    answer: str
    id: str | None = None
    image: Any = field(default=None, compare=False, repr=False)

    @property
    def question(self) -> str:  # the benchmarks' item interface (MathItem / VQAItem)
        return self.prompt

    def text_key(self) -> str:
        """What two items must not share across splits: the prompt, plus the image's digest for VQA."""
        return self.prompt if self.image is None else f"{self.prompt}\x00{image_digest(self.image)}"

    def load_image(self):
        if self.image is None:
            raise EvolutionError(f"item {self.id or self.prompt!r} has no image")
        return VQAItem(self.id or "", self.prompt, self.answer, self.image).load_image()


def image_digest(image: Any) -> str:
    """A content digest of an image given as a path, bytes or a PIL image."""
    h = hashlib.sha1()
    if isinstance(image, (bytes, bytearray)):
        h.update(image)
    elif isinstance(image, (str, Path)):
        try:
            h.update(Path(image).read_bytes())
        except OSError:
            h.update(str(image).encode())
    else:  # PIL image
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    return h.hexdigest()


def _arithmetic() -> list[Pair]:
    return [Pair(f"{a}+{b}=", str(a + b)) for a in range(10) for b in range(10)]


def _ja_sentences() -> list[Pair]:
    # one verb per (subject, place), so that every prompt has exactly one answer
    return [Pair(f"{s}は{p}へ", f"{JA_VERBS[(3 * i + j) % len(JA_VERBS)]}。")
            for i, s in enumerate(JA_SUBJECTS) for j, p in enumerate(JA_PLACES)]


def _copy_words() -> list[Pair]:
    rng = random.Random(7)
    words = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6))) for _ in range(400)})
    return [Pair(f"copy {w} -> ", w) for w in words]


_COLOURS = {"赤": (220, 30, 30), "青": (30, 60, 220), "緑": (30, 170, 60), "黄色": (235, 220, 40),
            "黒": (10, 10, 10), "白": (245, 245, 245), "紫": (140, 50, 170), "茶色": (130, 80, 40)}
_SHAPES = ("丸", "四角", "三角")


def _shape_image(colour: tuple[int, int, int], shape: str, size: int = 32):
    from PIL import Image, ImageDraw  # Pillow only for the VQA generator's drawings

    img = Image.new("RGB", (size, size), (128, 128, 128))
    d = ImageDraw.Draw(img)
    box = (6, 6, size - 7, size - 7)
    if shape == "丸":
        d.ellipse(box, fill=colour)
    elif shape == "四角":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(size // 2, 5), (size - 6, size - 6), (5, size - 6)], fill=colour)
    return img


def _vqa_shapes() -> list[Pair]:
    """Japanese VQA on drawn shapes (offline): a coloured circle, square or triangle on grey, asked
    for its colour or its shape; ids ``vqa_shapes/<colour>/<shape>/<colour|shape>``."""
    out = []
    for cname, rgb in _COLOURS.items():
        for shape in _SHAPES:
            img = _shape_image(rgb, shape)
            out.append(Pair("この図形は何色ですか？", f"{cname}です。", f"vqa_shapes/{cname}/{shape}/colour", img))
            out.append(Pair("この図形の形は何ですか？", f"{shape}です。", f"vqa_shapes/{cname}/{shape}/shape", img))
    return out


GENERATORS: Registry[Callable[[], list[Pair]]] = Registry("data generator")
GENERATORS.register("arithmetic", _arithmetic)
GENERATORS.register("ja_sentences", _ja_sentences)
GENERATORS.register("copy", _copy_words)
GENERATORS.register("vqa_shapes", _vqa_shapes)


def split_of(universe: list[Pair], split: str) -> list[Pair]:
    if split not in SPLITS:
        raise EvolutionError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    # split by id (items with images) or by prompt: no id or prompt is in two parts
    key = (lambda p: p.id) if all(p.id is not None for p in universe) else (lambda p: p.prompt)
    keys = sorted({key(p) for p in universe})
    random.Random(_UNIVERSE_SEED).shuffle(keys)
    lo, hi = SPLITS[split]
    part = set(keys[round(lo * len(keys)):round(hi * len(keys))])
    return [p for p in universe if key(p) in part]


def generate(names: list[str], split: str, n: int | None, seed: int) -> list[Pair]:
    parts = [split_of(GENERATORS.get(name)(), split) for name in names]
    for part in parts:
        random.Random(seed).shuffle(part)
    out: list[Pair] = []
    k = 0
    while any(parts) and (n is None or len(out) < n):  # round robin over the generators
        part = parts[k % len(parts)]
        if part:
            out.append(part.pop(0))
        k += 1
    return out


def check_data(spec: Mapping[str, Any], where: str = "") -> None:
    """Refuse, without reading any data, what :func:`load_pairs` would not find: a missing file, an
    MGSM source that is neither a local path nor a hub id, an unknown generator or split. ``where``
    (``FILE:LINE: key: ``) prefixes the error."""
    from tsugiki.merging.checkpoint import HUB_ID

    if "file" in spec and not Path(spec["file"]).is_file():
        raise EvolutionError(f"{where}{spec['file']}: no such file")
    source = spec.get("source")
    if source is not None and not Path(source).exists() and not HUB_ID.match(source):
        raise EvolutionError(f"{where}{source}: no such file or folder (and not a hub id)")
    names = spec.get("generator")
    for name in [names] if isinstance(names, str) else names or []:
        try:
            GENERATORS.get(name)
        except TsugikiError as e:
            raise EvolutionError(f"{where}{e}") from None
    if names is not None and spec.get("split", "fitness") not in SPLITS:
        raise EvolutionError(f"{where}split must be one of {', '.join(SPLITS)}, not {spec.get('split')!r}")


def load_pairs(spec: Mapping[str, Any], where: str = "data") -> list[Pair]:
    """Pairs for a validated data spec (file paths already absolute)."""
    if "pairs" in spec:
        return [_item(p, None) for p in spec["pairs"]]
    if "file" in spec:
        path = Path(spec["file"])
        pairs = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise EvolutionError(f"{where}: cannot read {path}: {e}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                pairs.append(_item(obj, path.parent))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise EvolutionError(f"{path}:{i}: expected a JSON object with 'prompt' (or 'question') and 'answer' "
                                     f"({type(e).__name__}: {e})") from None
        limit = spec.get("limit")
        return pairs[:limit] if limit is not None else pairs
    if "mgsm" in spec:  # the benchmark's own items, e.g. as the test set the fitness data must avoid
        from tsugiki.benchmarks.loaders import load_mgsm  # datasets and pyarrow load in seconds: only for MGSM data

        try:
            items = load_mgsm(spec["mgsm"], spec.get("source"))
        except BenchmarkError as e:
            raise EvolutionError(f"{where}: {e}") from None
        pairs = [Pair(i.question, str(i.answer), f"mgsm_{spec['mgsm']}/{i.id}") for i in items]
        limit = spec.get("limit")
        return pairs[:limit] if limit is not None else pairs
    names = spec["generator"]
    return generate(names if isinstance(names, list) else [names], spec.get("split", "fitness"), spec.get("n"), spec.get("seed", 0))


def _item(obj: Mapping[str, Any], base: Path | None) -> Pair:
    """A pair from ``{prompt|question, answer, id?, image?}`` (an image path is relative to ``base``)."""
    prompt = obj["prompt"] if "prompt" in obj else obj["question"]
    image = obj.get("image")
    if isinstance(image, str) and base is not None and not Path(image).is_absolute():
        image = str(base / image)
    return Pair(str(prompt), str(obj["answer"]), None if obj.get("id") is None else str(obj["id"]), image)


def check_disjoint(fitness: list[Pair], other: list[Pair], what: str = "validation", where: str = "",
                   against: str = "fitness") -> None:
    """Refuse ``other`` items (the ``what`` data) that share an id or a text (prompt, plus image for
    VQA) with ``fitness`` (the ``against`` data); ``where`` (``FILE:LINE: key: ``) prefixes the error."""
    ids = {p.id for p in fitness if p.id is not None}
    texts = {p.text_key() for p in fitness}
    shared = [p for p in other if (p.id is not None and p.id in ids) or p.text_key() in texts]
    if shared:
        p = shared[0]
        how = f"id {p.id!r}" if p.id is not None and p.id in ids else f"text {p.prompt!r}"
        raise EvolutionError(f"{where}{what} data shares {len(shared)} item(s) with the {against} data (by id or text), "
                             f"e.g. {how}; they must be disjoint")
