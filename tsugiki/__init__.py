"""tsugiki (接ぎ木, "grafting"): evolve merged models and benchmark them.

``tsugiki.merge(recipe, out)`` merges a recipe into a model dir, whatever the family of its sources
(:func:`tsugiki.families.merge`). It is imported on first use, so that ``import tsugiki`` stays light
(no torch).
"""

from typing import Any

from tsugiki.version import __version__


def __getattr__(name: str) -> Any:
    if name == "merge":
        from tsugiki.families import merge

        return merge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "merge"]
