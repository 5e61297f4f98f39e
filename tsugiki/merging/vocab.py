"""The output vocabulary of a causal-LM merge that names a tokenizer (mergekit 0.1.5's ``tokenizer_source`` and
``tokenizer:`` semantics, observed on its outputs and read in its code; no code taken from it).

Without ``tokenizer_source``/``tokenizer:`` the output takes its donor's tokenizer files and every tensor merges as
it is. With one, the output tokenizer is built first and every *vocabulary tensor* (embeddings, LM head: the rows
of a token) of every model is laid out in its vocabulary, token by token, before the method merges them; the
output has exactly that many rows and its config's ``vocab_size`` says so:

- ``base``: the base model's tokenizer (without base, the first model of the recipe), less any token whose id is
  at or past its config's ``vocab_size`` (BPE only); embedding rows past the tokenizer (padding) are dropped.
- a model reference (in the merge or not): that model's tokenizer as it is.
- ``union``: base's tokenizer, then the other models' ordinary tokens it lacks, appended as added tokens, then
  every model's added tokens it lacks (the first model's settings win). Order: models as the recipe lists them,
  each model's tokens by id (mergekit iterates a set and a hash map there, so its order varies between runs).
- ``tokenizer.tokens``: tokens to add (any the vocabulary lacks), and where a token's row comes from:
  ``source: MODEL`` (that model's row for it), ``{kind: zero}``, ``{kind: model_token, model, token | token_id}``;
  ``force: true`` gives every model that row, otherwise only the models that lack the token.
- rows a model lacks, with no rule: a token only one model of the tensor has comes from it; one the base has,
  from the base; one several have, their mean; one nobody has, zero.
- ``pad_to_multiple_of``: rows past the vocabulary, each the mean of the real rows (per model, before merging).

A token whose id in a model is at or past that model's ``vocab_size`` counts as absent from it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.recipe_tokenizer import TokenRule

log = logging.getLogger("tsugiki.merge")
VOCAB_ROLES = ("embedding", "lm_head")


@dataclass
class Vocabulary:
    """The output tokenizer and, per model, where each output token's row is in it (-1: absent)."""

    tokenizer: Any
    vocab: dict[str, int]  # token -> output id
    size: int  # output rows (the vocabulary, padded)
    rows: dict[str, list[int]]  # model ref -> per output id, its row or -1
    original: dict[str, dict[str, int]]  # model ref -> its own tokenizer's vocabulary
    rules: dict[str, TokenRule]
    origin: Path | None = None  # the folder the output tokenizer starts from (base's, or the named source's)

    def save(self, out: Path) -> list[str]:
        """Write the output tokenizer into ``out``; returns the file names. Its config keeps the ``auto_map`` its
        origin's had, for the merge's own check to remove and name in the model card (a merge ships no code)."""
        names = [Path(f).name for f in self.tokenizer.save_pretrained(str(out))]
        own = self.origin / "tokenizer_config.json" if self.origin is not None else None
        saved = out / "tokenizer_config.json"
        if own is not None and own.is_file() and saved.is_file():
            auto_map = json.loads(own.read_text(encoding="utf-8")).get("auto_map")
            if auto_map:
                saved.write_text(json.dumps({**json.loads(saved.read_text(encoding="utf-8")), "auto_map": auto_map},
                                            indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return names

    def __post_init__(self) -> None:
        # the same facts as tensors, for laying out a vocabulary of any size without a loop over its tokens
        self._index = {m: torch.tensor(r, dtype=torch.long) for m, r in self.rows.items()}
        self._tokens = {i: t for t, i in self.vocab.items()}
        self._forced = torch.zeros(len(self.vocab), dtype=torch.bool)
        for token, rule in self.rules.items():
            if rule.force and token in self.vocab:
                self._forced[self.vocab[token]] = True

    def layout(self, tensors: Mapping[str, torch.Tensor], base: str | None, name: str) -> dict[str, torch.Tensor]:
        """Each model's vocabulary tensor (rows first) laid out in the output vocabulary."""
        models = list(tensors)
        first = next(iter(tensors.values()))
        present = torch.stack([self._index[m] >= 0 for m in models])
        fills: dict[int, torch.Tensor] = {}  # output id -> its row, for the models that lack it (or all: forced)
        for i in (~present.all(0) | self._forced).nonzero().flatten().tolist():
            token = self._tokens[i]
            have = [m for m, p in zip(models, present[:, i].tolist()) if p]
            rule = self.rules.get(token)
            rule = rule if rule is not None and rule.kind is not None else _default_rule(token, have, base)
            if rule is None:  # the mean of the models that have it
                acc = first.new_zeros(first.shape[1:])
                for m in have:
                    acc = acc + tensors[m][self.rows[m][i]]
                fills[i] = acc / len(have)
            else:
                fills[i] = self._rule_row(rule, token, i, tensors, name)
        n = len(self.vocab)
        fill_ids = torch.tensor(sorted(fills), dtype=torch.long)
        fill_rows = torch.stack([fills[i] for i in sorted(fills)]) if fills else None
        out = {}
        for m in models:
            idx = self._index[m]
            take = (idx >= 0) & ~self._forced  # the model's own row
            new = first.new_zeros((self.size, *first.shape[1:]))
            new[:n][take] = tensors[m][idx[take]]
            lacking = ~take
            if fill_rows is not None:
                put = lacking[fill_ids]
                new[fill_ids[put]] = fill_rows[put]
                lacking[fill_ids] = False
            for i in lacking.nonzero().flatten().tolist():
                log.error("%s: no row for token %r in %s", name, self._tokens[i], m)
            if self.size > n:
                new[n:] = torch.mean(new[:n], dim=0)
            out[m] = new
        return out

    def _rule_row(self, rule: TokenRule, token: str, i: int, tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        first = next(iter(tensors.values()))
        if rule.kind == "zero":
            return first.new_zeros(first.shape[1:])
        if rule.model not in tensors:
            raise MergeError(f"{name}: token {token!r} takes its row from {rule.model}, which is not among this "
                             f"tensor's sources")
        if rule.kind == "model_token":
            row = rule.token_id if rule.token is None else self.original[rule.model].get(rule.token, -1)
            if not 0 <= row < tensors[rule.model].shape[0]:
                raise MergeError(f"{name}: token {token!r} takes row {rule.token if rule.token is not None else row!r} "
                                 f"of {rule.model}, which it does not have")
            return tensors[rule.model][row]
        row = self.rows[rule.model][i]
        if row < 0:
            raise MergeError(f"{name}: token {token!r} takes its row from {rule.model}, which lacks the token")
        return tensors[rule.model][row]


def _default_rule(token: str, have: Sequence[str], base: str | None) -> TokenRule | None:
    """Where a token's row comes from without a rule (``have``: the models that have it): the one model that has
    it, the base, nobody (zero); None: the mean of those that have it."""
    if len(have) == 1:
        return TokenRule("model", have[0])
    if not have:
        log.warning("token %r is in none of the models: its row is zero", token)
        return TokenRule("zero")
    return TokenRule("model", base) if base in have else None


# ------------------------------------------------------------------------------------ building
def build_vocabulary(source: str, base: str, models: Sequence[str], dirs: Mapping[str, Path],
                     configs: Mapping[str, Mapping | None], rules: Mapping[str, TokenRule],
                     pad_to_multiple_of: int | None = None) -> Vocabulary:
    """The output vocabulary of a merge of ``models`` (refs; ``dirs``: their folders, and the tokenizer source's)
    whose tokenizer comes from ``source`` (``base``, ``union`` or a model reference)."""
    base_tok = _stripped(dirs[base], _vocab_size(configs.get(base)), base)
    tokenizers = {base: base_tok}
    for m in models:
        if m != base:
            tokenizers[m] = _load(dirs[m])
    if source == "base":
        out = base_tok
    elif source == "union":
        out = _union(base_tok, [tokenizers[m] for m in models if m != base], [configs.get(m) for m in models if m != base])
    else:
        out = _load(dirs[source])
    missing = [t for t in rules if t not in out.get_vocab()]
    if missing:
        out = _fresh(out)
        for token in missing:
            out.add_tokens(token)
    vocab = out.get_vocab()
    size = len(vocab)
    if pad_to_multiple_of and size % pad_to_multiple_of:
        size += pad_to_multiple_of - size % pad_to_multiple_of
    rows = {}
    for m in models:
        own, limit = tokenizers[m].get_vocab(), _vocab_size(configs.get(m))
        rows[m] = [-1] * len(vocab)
        for token, i in vocab.items():
            j = own.get(token, -1)
            rows[m][i] = j if j >= 0 and (limit is None or j < limit) else -1
    origin = dirs[base] if source in ("base", "union") else dirs[source]
    return Vocabulary(out, vocab, size, rows, {m: t.get_vocab() for m, t in tokenizers.items()}, dict(rules), origin)


def _vocab_size(config: Mapping | None) -> int | None:
    config = config or {}
    value = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return value if isinstance(value, int) else None


def _load(folder: Path) -> Any:
    """``folder``'s tokenizer, loaded from a copy of its files without ``auto_map`` (a merge runs no code): a
    tokenizer that needs its own code does not load, in one line."""
    import shutil

    from transformers import AutoTokenizer

    from tsugiki.hf_load import drop_auto_map, from_pretrained
    from tsugiki.tokenizer_cache import TOKENIZER_FILES

    with tempfile.TemporaryDirectory(prefix="tsugiki-tokenizer-") as tmp:
        for name in (*TOKENIZER_FILES, "config.json"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, Path(tmp) / name)
        drop_auto_map(Path(tmp))
        try:
            return from_pretrained(AutoTokenizer, tmp, use_fast=True)
        except (OSError, ValueError) as e:
            raise MergeError(f"{folder}: cannot load its tokenizer without running its code: {e}") from None


def _fresh(tokenizer: Any) -> Any:
    """An independent copy (saved and loaded again), to add tokens to."""
    with tempfile.TemporaryDirectory(prefix="tsugiki-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        return _load(Path(tmp))


def _stripped(folder: Path, vocab_size: int | None, ref: str) -> Any:
    """The tokenizer of ``folder`` less the tokens at ids >= ``vocab_size`` (rows the model does not have)."""
    tok = _load(folder)
    unused = {t for t, i in tok.get_vocab().items() if vocab_size is not None and i >= vocab_size}
    if not unused:
        return tok
    data = json.loads(tok.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise MergeError(f"{ref}: its tokenizer has tokens past vocab_size {vocab_size} and is "
                         f"{data['model']['type']}, not BPE: tsugiki (as mergekit) cuts only BPE vocabularies")
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < vocab_size]
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if t not in unused}
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if not set(m.split(" ") if isinstance(m, str) else m) & unused]
    from tokenizers import Tokenizer

    tok = _fresh(tok)
    tok._tokenizer = Tokenizer.from_str(json.dumps(data))
    return tok


def _union(base: Any, others: Sequence[Any], configs: Sequence[Mapping | None]) -> Any:
    ordinary: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, config in zip([base, *others], [None, *configs]):
        limit = _vocab_size(config)
        specials = {a.content for a in tok.added_tokens_decoder.values()}
        for token, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if (limit is None or i < limit) and token not in specials:
                ordinary.setdefault(token)
        for i, info in sorted(tok.added_tokens_decoder.items()):
            if (limit is None or i < limit) and info.content not in added:
                added[info.content] = info
    out = _fresh(base)
    have = set(base.get_vocab())
    for token in ordinary:
        if token not in added and token not in have:
            out.add_tokens(token)
    for info in added.values():
        out.add_tokens(info)  # those the base has already are kept as they are
    return out


def recipe_vocabulary(recipe: Any, sources: Mapping[str, Any], base_dir: Path | None = None) -> Vocabulary | None:
    """The output vocabulary of a causal-LM ``recipe`` whose ``sources`` (opened checkpoints) are merged; None
    where it names no tokenizer (the donor's files are copied and nothing is laid out)."""
    if recipe.tokenizer_source is None:
        return None
    from tsugiki.merging.checkpoint import resolve_model_ref
    from tsugiki.merging.refs import split_lora_ref

    refs = recipe.model_refs()
    dirs = {r: Path(sources[r].model_dir) for r in refs}
    source = recipe.tokenizer_source
    if source not in ("base", "union") and source not in dirs:  # a tokenizer from outside the merge
        path = resolve_model_ref(split_lora_ref(source)[0], base_dir=base_dir)  # an adapter changes no tokenizer
        dirs[source] = path if path.is_dir() else path.parent
    spec = recipe.tokenizer
    return build_vocabulary(source, recipe.base_model or refs[0], refs, dirs, {r: sources[r].config() for r in refs},
                            dict(spec.tokens) if spec else {}, spec.pad_to_multiple_of if spec else None)
