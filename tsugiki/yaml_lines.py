"""Line-tracking YAML: YAML text -> plain data, plus the line of every node.

Merge recipes (:mod:`tsugiki.merging.recipe`) and evolve configs (:mod:`tsugiki.evolution.config`) are
both read with it, so both report ``FILE:LINE: path: message``. :func:`parse_yaml` composes the YAML
node graph with PyYAML's safe loader and walks it (:class:`_Walker`) into plain data (dicts, lists,
scalars), while recording, for each dotted path (``slices[0].sources[1].layer_range``), the line of its
value node (``lines``) and of its mapping key (``key_lines``); the validators use them to prefix every
message with ``FILE:LINE: ``. Merge keys (``<<``), non-standard tags, duplicate keys, non-string keys,
recursive aliases and oversized / overly deep documents are refused here with a RecipeError (the evolve
config turns it into its EvolutionError).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from tsugiki.errors import RecipeError

_MAX_NODES = 200_000
_MAX_DEPTH = 200


def dotted_path(path: Sequence[Union[str, int]]) -> str:
    """A key path as messages show it: ``("slices", 0, "sources")`` -> ``slices[0].sources``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def parent_path(p: str) -> str:
    """The dotted path one level up (``slices[0].sources`` -> ``slices[0]``; top level -> "")."""
    if p.endswith("]"):
        return p[: p.rindex("[")]
    return p.rsplit(".", 1)[0] if "." in p else ""


def nearest_line(lines: Mapping[str, int], path: str) -> Optional[int]:
    """The line of ``path``, or of its nearest ancestor that has one (messages point at it)."""
    p = path
    while p not in lines:
        if not p:
            return None
        p = parent_path(p)
    return lines[p]


def parse_yaml(text: str, name: str) -> tuple[Any, dict[str, int], dict[str, int]]:
    """YAML text -> (plain data, line of each key path, line of each value path); errors name ``name:line``."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        line = text[: max(e.position, 0)].count("\n") + 1
        raise RecipeError(f"{name}:{line}: invalid YAML: unacceptable character #x{e.character:04x}") from None
    except yaml.YAMLError as e:  # pragma: no cover - defensive
        raise RecipeError(f"{name}: invalid YAML: {e}") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(x) for x in (e.context, e.problem) if x)
            raise RecipeError(f"{name}{line}: invalid YAML: {problem or e}") from None
        except yaml.YAMLError as e:
            raise RecipeError(f"{name}: invalid YAML: {e}") from None
        except RecursionError:
            raise RecipeError(f"{name}: invalid YAML: nested too deeply") from None
        if node is None:
            raise RecipeError(f"{name}:1: recipe is empty")
        walker = _Walker(name, loader)
        data = walker.walk(node, (), 0)
        return data, walker.lines, walker.key_lines
    finally:
        loader.dispose()


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Walker:
    """Turns a composed YAML node graph into plain data, recording the line of every node."""

    def __init__(self, name: str, loader: yaml.SafeLoader):
        self.name = name
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.key_lines: dict[str, int] = {}
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: tuple, msg: str) -> RecipeError:
        at = dotted_path(path)
        return RecipeError(f"{self.name}:{node.start_mark.line + 1}: {at + ': ' if at else ''}{msg}")

    def walk(self, node: yaml.Node, path: tuple, depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.fail(node, path, "recipe is too large (alias expansion?)")
        if depth > _MAX_DEPTH:
            raise self.fail(node, path, "recipe is nested too deeply")
        key = dotted_path(path)
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.stack:
            raise self.fail(node, path, "recursive YAML alias")
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                return [self.walk(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.tag != _MAP_TAG:
                    raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                out: dict[str, Any] = {}
                for knode, vnode in node.value:
                    if knode.tag == _MERGE_TAG:
                        raise self.fail(knode, path, "YAML merge keys (<<) are not supported")
                    if not isinstance(knode, yaml.ScalarNode):
                        raise self.fail(knode, path, "mapping keys must be plain strings")
                    k = self.scalar(knode, path)
                    if not isinstance(k, str):
                        raise self.fail(knode, path, f"mapping key {k!r} is not a string")
                    if k in out:
                        raise self.fail(knode, path + (k,), f"duplicate key {k!r}")
                    self.key_lines.setdefault(dotted_path(path + (k,)), knode.start_mark.line + 1)
                    out[k] = self.walk(vnode, path + (k,), depth + 1)
                return out
            raise self.fail(node, path, "unsupported YAML node")  # pragma: no cover
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
            raise self.fail(node, path, f"invalid YAML value: {problem}") from None
        except Exception as e:  # PyYAML raises ValueError etc. for e.g. "2020-13-45" or "!!int x"
            raise self.fail(node, path, f"invalid YAML value {node.value!r}: {e}") from None
