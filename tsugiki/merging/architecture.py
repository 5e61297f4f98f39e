"""Architecture knowledge as data: which tensors are embeddings, per-layer weights, norms, lm_head.

Known architectures are JSON files in `architectures/` (one per family, `${layer_index}` templates).
A checkpoint whose architecture is unknown is described by inference from its key patterns
(`<prefix>.layers.N.<suffix>`), and the description says it was inferred.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

from tsugiki.errors import CheckpointError, MergeError
from tsugiki.registry import Registry

LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<suffix>.+)$")


@dataclass(frozen=True)
class WeightSpec:
    name: str
    role: str  # embedding | attention | mlp | norm | lm_head | other
    optional: bool = False
    tied_to: str | None = None


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    architectures: tuple[str, ...]
    layer_prefix: str  # e.g. "model.layers.${layer_index}."
    pre_weights: tuple[WeightSpec, ...]
    layer_weights: tuple[WeightSpec, ...]
    post_weights: tuple[WeightSpec, ...]
    num_layers_key: str = "num_hidden_layers"
    model_type: str | None = None
    per_layer_config_keys: tuple[str, ...] = ()
    inferred: bool = False
    _layer_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        before, _, after = self.layer_prefix.partition("${layer_index}")
        pattern = re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + r"(.+)$")
        object.__setattr__(self, "_layer_re", pattern)

    def layer_name(self, index: int, suffix: str) -> str:
        return self.layer_prefix.replace("${layer_index}", str(index)) + suffix

    def layer_of(self, tensor_name: str) -> tuple[int, str] | None:
        """(layer index, suffix) for a per-layer tensor, None for pre/post weights."""
        m = self._layer_re.match(tensor_name)
        return (int(m.group(1)), m.group(2)) if m else None

    def role_of(self, tensor_name: str) -> str:
        parsed = self.layer_of(tensor_name)
        specs = self.layer_weights if parsed else self.pre_weights + self.post_weights
        key = parsed[1] if parsed else tensor_name
        return next((w.role for w in specs if w.name == key), "other")

    def is_pre(self, tensor_name: str) -> bool:
        """Non-layer tensors before the layers (embeddings); everything else non-layer is post."""
        if any(w.name == tensor_name for w in self.pre_weights):
            return True
        if any(w.name == tensor_name for w in self.post_weights):
            return False
        return "embed" in tensor_name

    def num_layers(self, config: dict | None, names: list[str] | None = None) -> int:
        if config and isinstance(config.get(self.num_layers_key), int):
            return config[self.num_layers_key]
        if names is None:
            raise MergeError(f"{self.name}: config has no {self.num_layers_key!r}")
        layers = {p[0] for n in names if (p := self.layer_of(n))}
        return max(layers) + 1 if layers else 0

    def missing_weights(self, names: list[str], num_layers: int) -> list[str]:
        """Required tensors of this architecture that `names` lacks."""
        present = set(names)
        expected = [w.name for w in self.pre_weights + self.post_weights if not w.optional]
        expected += [self.layer_name(i, w.name) for i in range(num_layers) for w in self.layer_weights if not w.optional]
        return [n for n in expected if n not in present]


def _weights(items: list[dict]) -> tuple[WeightSpec, ...]:
    return tuple(WeightSpec(**item) for item in items)


def load_spec(data: dict) -> ArchitectureSpec:
    return ArchitectureSpec(
        name=data["name"],
        architectures=tuple(data["architectures"]),
        layer_prefix=data["layer_prefix"],
        pre_weights=_weights(data["pre_weights"]),
        layer_weights=_weights(data["layer_weights"]),
        post_weights=_weights(data["post_weights"]),
        num_layers_key=data.get("num_layers_key", "num_hidden_layers"),
        model_type=data.get("model_type"),
        per_layer_config_keys=tuple(data.get("per_layer_config_keys", ())),
    )


def _load_builtin() -> Registry[ArchitectureSpec]:
    registry: Registry[ArchitectureSpec] = Registry("architecture")
    folder = resources.files("tsugiki.merging") / "architectures"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            spec = load_spec(json.loads(entry.read_text()))
            registry.register(spec.name, spec)
    return registry


ARCHITECTURES = _load_builtin()


def spec_for_class(class_name: str) -> ArchitectureSpec | None:
    return next((ARCHITECTURES.get(n) for n in ARCHITECTURES if class_name in ARCHITECTURES.get(n).architectures), None)


def infer_architecture(names: list[str], label: str = "") -> ArchitectureSpec:
    """Describe an unknown checkpoint from its key patterns."""
    prefixes = Counter(m.group("prefix") for n in names if (m := LAYER_KEY.match(n)))
    if not prefixes:
        prefix = "layers.${layer_index}."  # no per-layer tensors: every tensor is pre/post
    else:
        prefix = prefixes.most_common(1)[0][0] + ".${layer_index}."
    spec = ArchitectureSpec(name="inferred", architectures=(), layer_prefix=prefix, pre_weights=(), layer_weights=(),
                            post_weights=(), inferred=True)
    suffixes = sorted({p[1] for n in names if (p := spec.layer_of(n))})
    pre = [WeightSpec(n, "embedding" if "embed" in n else "other") for n in names if not spec.layer_of(n) and spec.is_pre(n)]
    post = [WeightSpec(n, "other") for n in names if not spec.layer_of(n) and not spec.is_pre(n)]
    return ArchitectureSpec(name="inferred", architectures=(), layer_prefix=prefix, pre_weights=tuple(pre),
                            layer_weights=tuple(WeightSpec(s, "other") for s in suffixes), post_weights=tuple(post),
                            inferred=True)


def architecture_for(config: dict | None, names: list[str], label: str) -> ArchitectureSpec:
    """The spec for a checkpoint: its config's `architectures` class if known, else inferred."""
    classes = (config or {}).get("architectures") or []
    for cls in classes:
        spec = spec_for_class(cls)
        if spec is not None:
            missing = spec.missing_weights(names, spec.num_layers(config, names))
            if missing:
                raise CheckpointError(f"{label}: tensor {missing[0]!r} missing ({len(missing)} required {spec.name} tensors absent)")
            return spec
    return infer_architecture(names, label)


def describe(spec: ArchitectureSpec, names: list[str], config: dict | None) -> str:
    """A short human-readable report (for `tsugiki inspect`)."""
    roles = Counter(spec.role_of(n) for n in names)
    n_layers = spec.num_layers(config, names)
    how = "inferred from key patterns (unknown architecture)" if spec.inferred else f"known architecture {spec.name!r}"
    lines = [f"architecture: {how}", f"layers: {n_layers} ({spec.layer_prefix}…)", f"tensors: {len(names)}"]
    lines += [f"  {role}: {count}" for role, count in sorted(roles.items())]
    return "\n".join(lines)
