"""A recipe's tokenizer keys, as mergekit 0.1.5 writes them: ``tokenizer_source: base | union | MODEL``, or
``tokenizer: {source, tokens, pad_to_multiple_of}`` (``source`` defaults to ``union`` there). What they do to the
merge: :mod:`tsugiki.merging.vocab`. Checked here into plain values; dumped back by :func:`tokenizer_data`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence


@dataclass(frozen=True)
class TokenRule:
    """One entry of ``tokenizer.tokens``: where the token's row comes from (``kind`` model | zero | model_token;
    None: the default rule, only adding the token), ``model``, ``token`` / ``token_id`` for model_token, and
    ``force`` (every model takes that row, not only those that lack the token)."""

    kind: Optional[str] = None
    model: Optional[str] = None
    token: Optional[str] = None
    token_id: Optional[int] = None
    force: bool = False

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind == "model":
            out["source"] = self.model
        elif self.kind == "zero":
            out["source"] = {"kind": "zero"}
        elif self.kind == "model_token":
            which = {"token": self.token} if self.token is not None else {"token_id": self.token_id}
            out["source"] = {"kind": "model_token", "model": self.model, **which}
        if self.force:
            out["force"] = True
        return out

    def mapped(self, fn: Callable[[str], str]) -> "TokenRule":
        return replace(self, model=fn(self.model)) if self.model is not None else self


@dataclass(frozen=True)
class TokenizerSpec:
    """``tokenizer:`` beyond its source: ``tokens`` (token -> rule, in the order written) and ``pad_to_multiple_of``."""

    tokens: tuple[tuple[str, TokenRule], ...] = ()
    pad_to_multiple_of: Optional[int] = None


def tokenizer_data(source: Optional[str], spec: Optional[TokenizerSpec]) -> dict[str, Any]:
    """The recipe keys that write ``source`` and ``spec`` (the ``tokenizer:`` form only where ``spec`` is set)."""
    if spec is None:
        return {} if source is None else {"tokenizer_source": source}
    d: dict[str, Any] = {"source": source}
    if spec.tokens:
        d["tokens"] = {t: rule.data() for t, rule in spec.tokens}
    if spec.pad_to_multiple_of is not None:
        d["pad_to_multiple_of"] = spec.pad_to_multiple_of
    return {"tokenizer": d}


def check_tokenizer(chk: Any, d: Mapping[str, Any], base: Optional[str],
                    refs: Sequence[str]) -> tuple[Optional[str], Optional[TokenizerSpec]]:
    """``(source, spec)`` from a recipe mapping ``d``; ``chk``: the :class:`~tsugiki.merging.recipe_check.RecipeChecker`
    (errors with file and line); ``refs``: the models the recipe merges (token rules may name only those)."""
    ts, tk = d.get("tokenizer_source"), d.get("tokenizer")
    if ts is not None and tk is not None:
        raise chk.err(("tokenizer",), "give either 'tokenizer_source' or 'tokenizer', not both", key=True)
    path: tuple = ("tokenizer_source",)
    spec = None
    if tk is not None:
        t = chk.mapping(tk, ("tokenizer",), ("source", "tokens", "pad_to_multiple_of"), "'tokenizer'")
        ts, path = t.get("source", "union"), ("tokenizer", "source")
        pad = t.get("pad_to_multiple_of")
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
            raise chk.err(("tokenizer", "pad_to_multiple_of"), f"expected a positive integer, got {pad!r}")
        tokens = _tokens(chk, t.get("tokens"), refs)
        spec = TokenizerSpec(tokens, pad) if tokens or pad is not None else None
    if ts is None:
        return None, None
    return (ts if ts in ("base", "union") else chk.model_ref(ts, path)), spec


def _tokens(chk: Any, value: Any, refs: Sequence[str]) -> tuple[tuple[str, TokenRule], ...]:
    if value is None:
        return ()
    path = ("tokenizer", "tokens")
    if not isinstance(value, Mapping):
        raise chk.err(path, f"expected a mapping of token -> {{source, force}}, got {type(value).__name__}")
    out = []
    for token, rule in value.items():
        p = path + (token,)
        if not isinstance(token, str) or not token:
            raise chk.err(path, f"token {token!r} is not a string")
        r = chk.mapping(rule if rule is not None else {}, p, ("source", "force"), "a token rule")
        force = r.get("force", False)
        if not isinstance(force, bool):
            raise chk.err(p + ("force",), f"expected true or false, got {force!r}")
        out.append((token, TokenRule(force=force, **_source(chk, r.get("source"), p + ("source",), refs))))
    return tuple(out)


def _source(chk: Any, value: Any, path: tuple, refs: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping) and value.get("kind") in ("zero", "model_token"):
        if value["kind"] == "zero":
            chk.mapping(value, path, ("kind",), "a zero source")
            return {"kind": "zero"}
        v = chk.mapping(value, path, ("kind", "model", "token", "token_id"), "a model_token source")
        if ("token" in v) == ("token_id" in v):
            raise chk.err(path, "a model_token source takes exactly one of 'token' and 'token_id'")
        tid = v.get("token_id")
        if "token_id" in v and (not isinstance(tid, int) or isinstance(tid, bool) or tid < 0):
            raise chk.err(path + ("token_id",), f"expected a token id (an integer >= 0), got {tid!r}")
        if "token" in v and not isinstance(v["token"], str):
            raise chk.err(path + ("token",), f"expected a token (a string), got {v['token']!r}")
        return {"kind": "model_token", "model": _merged(chk, v.get("model"), path + ("model",), refs),
                "token": v.get("token"), "token_id": tid}
    if isinstance(value, Mapping) and "kind" in value:
        raise chk.err(path + ("kind",), f"expected 'zero' or 'model_token', got {value['kind']!r}")
    return {"kind": "model", "model": _merged(chk, value, path, refs)}


def _merged(chk: Any, value: Any, path: tuple, refs: Sequence[str]) -> str:
    ref = chk.model_ref(value, path)
    if ref not in refs:
        raise chk.err(path, f"token rule names model {ref!r}, which the recipe does not merge "
                            f"({', '.join(dict.fromkeys(refs))})")
    return ref
