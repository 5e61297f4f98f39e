"""Model references in recipes: ``path``, ``path@revision``, and a model with a LoRA adapter applied.

mergekit's syntax, kept: ``MODEL+ADAPTER`` (each part a local path or hub id, optionally ``@revision``)
names MODEL with the peft LoRA adapter ADAPTER merged into it, and so does its expanded form
``{model: MODEL, lora: ADAPTER}`` (each part a string or ``{path, revision}``), which is normalised to
the ``MODEL+ADAPTER`` string. :mod:`tsugiki.merging.lora` applies the adapter when tensors are read.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

LORA_SEP = "+"


def split_lora_ref(ref: str) -> tuple[str, Optional[str]]:
    """``"MODEL+ADAPTER"`` -> ``("MODEL", "ADAPTER")``; a plain reference -> ``(ref, None)``."""
    model, sep, adapter = ref.partition(LORA_SEP)
    return (model, adapter) if sep else (ref, None)


def split_revision(part: str) -> tuple[str, Optional[str]]:
    """``"path@rev"`` -> ``("path", "rev")``; ``"path"`` -> ``("path", None)``."""
    path, sep, rev = part.partition("@")
    return (path, rev) if sep else (part, None)


def type_name(v: Any) -> str:
    """How recipe errors name the type of a value ("a number", "a list", ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    return f"a {type(v).__name__}"


def check_model_ref(checker: Any, value: Any, path: tuple, *, optional: bool = False) -> Optional[str]:
    """A recipe's model reference (any of the forms in the module doc) -> its string form, or a
    RecipeError at ``path`` from ``checker`` (a :class:`~tsugiki.merging.recipe_check.RecipeChecker`)."""
    if value is None:
        if optional:
            return None
        raise checker.err(path, "a model reference is required")
    if isinstance(value, Mapping):  # mergekit's expanded form {model: {path, revision}, lora, ...}
        v = checker.mapping(value, path, ("model", "lora", "override_architecture"), "a model reference")
        if v.get("override_architecture") is not None:
            raise checker.err(path + ("override_architecture",), "'override_architecture' is not supported", key=True)
        model = _part(checker, v.get("model"), path + ("model",), "model")
        if v.get("lora") is None:
            return model
        adapter = _part(checker, v["lora"], path + ("lora",), "lora")
        return f"{model}{LORA_SEP}{adapter}"
    if not isinstance(value, str):
        raise checker.err(path, f"a model reference must be a string, got {type_name(value)}")
    if not value.strip():
        raise checker.err(path, "empty model reference")
    parts = value.split(LORA_SEP)
    if len(parts) > 2:
        raise checker.err(path, f"invalid model reference {value!r}: more than one '+' (MODEL+ADAPTER names one adapter)")
    for part in parts:
        if not part.strip():
            raise checker.err(path, f"invalid model reference {value!r}: empty model or adapter around '+'")
        if part.count("@") > 1:
            raise checker.err(path, f"invalid model reference {value!r}: more than one '@'")
        if part.endswith("@") or part.startswith("@"):
            raise checker.err(path, f"invalid model reference {value!r}: empty path or revision")
    return value


def _part(checker: Any, value: Any, path: tuple, what: str) -> str:
    """One side of the expanded form: a string (``path@rev``, no ``+``) or ``{path, revision}``."""
    if isinstance(value, Mapping):
        m = checker.mapping(value, path, ("path", "revision"), "a model path")
        p = checker.string(m.get("path"), path + ("path",), optional=False)
        rev = checker.string(m.get("revision"), path + ("revision",))
        for ch in "@+":
            if ch in p:  # type: ignore[operator]
                raise checker.err(path + ("path",), f"{ch!r} in a model path is not supported")
        return f"{p}@{rev}" if rev is not None else p  # type: ignore[return-value]
    ref = check_model_ref(checker, value, path)
    if LORA_SEP in ref:  # type: ignore[operator]
        raise checker.err(path, f"{what}: {ref!r} holds a '+': give the adapter in 'lora' alone")
    return ref  # type: ignore[return-value]
