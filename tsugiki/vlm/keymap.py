"""The LLaVA ↔ standalone-LLM key map, read from package data (`vlm/keymaps/llava.json`).

A LLaVA-family checkpoint holds a whole causal LM under a prefix (`language_model.model.*` on disk,
`model.language_model.*` in transformers 5 modules) beside its vision side. The map renames the
language model's tensors to the standalone names (`model.*`, `lm_head.*`) that the merge engine and
its architecture specs know, and back. Renaming is by whole prefix, in both directions, and every
tensor must land in exactly one place: language model, vision side, or an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable

from tsugiki.errors import CheckpointError


@dataclass(frozen=True)
class Layout:
    """One key layout of a LLaVA-family model."""

    name: str
    rules: tuple[tuple[str, str], ...]  # (standalone-LLM prefix, VLM prefix) of language-model tensors
    vision: tuple[str, ...]  # prefixes of the vision side (tower, projector, image_newline)

    def to_llm(self, vlm_name: str) -> str | None:
        """The standalone-LLM name of a language-model tensor; None for any other tensor."""
        for llm, vlm in self.rules:
            if vlm_name.startswith(vlm):
                return llm + vlm_name[len(vlm):]
        return None

    def to_vlm(self, llm_name: str) -> str:
        for llm, vlm in self.rules:
            if llm_name.startswith(llm):
                return vlm + llm_name[len(llm):]
        prefixes = ", ".join(llm for llm, _ in self.rules)
        raise CheckpointError(f"tensor {llm_name!r}: not a causal-LM tensor name (expected a prefix among {prefixes})")

    def is_vision(self, name: str) -> bool:
        return name.startswith(self.vision)

    def marker_prefixes(self) -> tuple[str, ...]:
        """Language-model prefixes that only this layout uses (the ones renamed)."""
        return tuple(vlm for llm, vlm in self.rules if llm != vlm)


@dataclass(frozen=True)
class KeyMap:
    name: str
    model_types: dict[str, str]  # model_type -> transformers class
    layouts: dict[str, Layout]
    vision_aliases: tuple[tuple[str, str], ...]

    def detect(self, names: Iterable[str], label: str) -> Layout:
        """The layout `names` are written in; an error if none or several match."""
        names = list(names)
        found = [lay for lay in self.layouts.values() if any(n.startswith(lay.marker_prefixes()) for n in names)]
        if len(found) == 1:
            return found[0]
        markers = " or ".join(p for lay in self.layouts.values() for p in lay.marker_prefixes()[:1])
        if not found:
            raise CheckpointError(f"{label}: no language-model tensors in a {self.name} key layout (expected keys starting with {markers})")
        raise CheckpointError(f"{label}: mixes key layouts {', '.join(lay.name for lay in found)} ({markers} both present)")

    def canonical_vision(self, name: str) -> str:
        """A vision tensor's name with historical aliases resolved (for comparing key sets)."""
        for old, new in self.vision_aliases:
            if name.startswith(old):
                return new + name[len(old):]
        return name


def _load(data: dict) -> KeyMap:
    layouts = {
        name: Layout(name, tuple((r["llm"], r["vlm"]) for r in lay["language_model"]), tuple(lay["vision"]))
        for name, lay in data["layouts"].items()
    }
    aliases = tuple((a["from"], a["to"]) for a in data.get("vision_aliases", ()))
    return KeyMap(data["name"], dict(data["model_types"]), layouts, aliases)


@lru_cache(maxsize=None)
def load_keymap(name: str = "llava") -> KeyMap:
    entry = resources.files("tsugiki.vlm") / "keymaps" / f"{name}.json"
    return _load(json.loads(entry.read_text()))
