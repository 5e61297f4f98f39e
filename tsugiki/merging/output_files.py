"""The non-weight files of a merged model dir: config, tokenizer, generation config, recipe, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import torch

from tsugiki.version import __version__
from tsugiki.errors import RecipeError
from tsugiki.merging.plan import MergePlan
from tsugiki.merging.recipe import Recipe

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def merged_config(plan: MergePlan, configs: Mapping[str, dict | None], out_dtype: torch.dtype | None) -> dict:
    """The donor's config with the layer count (and per-layer lists) of the output."""
    config = json.loads(json.dumps(configs[plan.donor] or {}))
    if config.get(plan.arch.num_layers_key) is not None or not plan.arch.inferred:
        config[plan.arch.num_layers_key] = plan.num_layers
    for key in plan.arch.per_layer_config_keys:
        if isinstance(config.get(key), list):
            config[key] = [(configs[ref] or {})[key][layer] for ref, layer in plan.layer_sources]
    if plan.vocab is not None:  # the rows of the output vocabulary (mergekit sets vocab_size so too)
        config["vocab_size"] = plan.vocab.size
    if out_dtype is not None and out_dtype in DTYPE_NAMES:
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]
        for k in keys:
            config[k] = DTYPE_NAMES[out_dtype]
    return config


def tokenizer_donor(recipe: Recipe, plan: MergePlan) -> str:
    src = recipe.tokenizer_source
    if src is None:
        return plan.donor
    if src == "base":
        if not recipe.base_model:
            raise RecipeError("tokenizer_source: base needs a base_model")
        return recipe.base_model
    return src


def copy_side_files(model_dirs: Mapping[str, Path], recipe: Recipe, plan: MergePlan, out: Path) -> list[str]:
    """Copy tokenizer and generation config from their donors; returns the names copied."""
    copied = []
    if plan.vocab is not None:  # the output tokenizer, as built (tsugiki.merging.vocab)
        copied += [name for name in plan.vocab.save(out) if name in TOKENIZER_FILES]
    else:
        tok_dir = model_dirs[tokenizer_donor(recipe, plan)]
        for name in TOKENIZER_FILES:
            if (tok_dir / name).exists():
                shutil.copy2(tok_dir / name, out / name)
                copied.append(name)
    gen = model_dirs[plan.donor] / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, out / "generation_config.json")
        copied.append("generation_config.json")
    if recipe.chat_template:
        if "{{" not in recipe.chat_template and "{%" not in recipe.chat_template:
            raise RecipeError(f"chat_template: named templates ({recipe.chat_template!r}) are not supported; give a Jinja template")
        (out / "chat_template.jinja").write_text(recipe.chat_template)
        copied.append("chat_template.jinja")
    return copied


def dropped_code_note(dropped: Mapping[str, str]) -> str:
    """The card's paragraph on the ``auto_map`` entries a merge removed (:func:`tsugiki.hf_load.drop_auto_map`)."""
    if not dropped:
        return ""
    files = "; ".join(f"`{name}` (it named {modules})" for name, modules in dropped.items())
    return (f"\n## Custom code\n`auto_map` was removed from {files}: a merge ships no code, so its configs name none. "
            f"The model loads with the library's own classes for its model type, or not at all.\n")


def model_card(recipe: Recipe, plan: MergePlan, sources: str) -> str:
    """The model card; ``recipe`` as written in the dir, ``sources`` its Sources section
    (:func:`tsugiki.merging.provenance.describe`)."""
    return f"""---
library_name: transformers
tags: [merge, tsugiki]
---
# Merged model

Made with [tsugiki](https://pypi.org/project/tsugiki/) {__version__} using the **{plan.method.name}** merge method
({plan.method.reference or 'see tsugiki docs'}).

## Sources
{sources.rstrip()}

Output: {plan.num_layers} layers, {len(plan.jobs)} tensors; architecture `{plan.arch.name}`{' (inferred)' if plan.arch.inferred else ''}.

## Recipe
The exact recipe is in `tsugiki_recipe.yaml`:

```yaml
{recipe.to_yaml().rstrip()}
```
"""
