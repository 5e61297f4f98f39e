"""Record whole-recipe merges by mergekit 0.1.5 for tests/data/mergekit_recipes/ (the methods added in
issue 14, each in slices with per-tensor filters, the way a model card's recipe uses them).

Run with a Python that has mergekit installed (tsugiki itself never imports mergekit):

    /work/mkvenv/bin/python scripts/make_mergekit_recipes.py

It writes four tiny Llama checkpoints (base, a, b, c: 4 layers, hidden 8; a, b, c are the base plus
noise, sparse for some tensors so that ram and sce see unique and shared changes) under models/, and for
each recipe <name>.yaml (model paths relative to the fixture dir, written as ``{root}/...``) the merged
``<name>.safetensors`` from mergekit's ``run_merge``. tests/merging/test_mergekit_recipes.py merges the same
recipes with tsugiki and compares.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mergekit_recipes"
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16,
    "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32",
}
SHAPES = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,), "lm_head.weight": (16, 8)}
for _i in range(4):
    for _name, _shape in {"self_attn.q_proj": (8, 8), "self_attn.k_proj": (4, 8), "self_attn.v_proj": (4, 8),
                          "self_attn.o_proj": (8, 8), "mlp.gate_proj": (16, 8), "mlp.up_proj": (16, 8),
                          "mlp.down_proj": (8, 16)}.items():
        SHAPES[f"model.layers.{_i}.{_name}.weight"] = _shape
    for _norm in ("input_layernorm", "post_attention_layernorm"):
        SHAPES[f"model.layers.{_i}.{_norm}.weight"] = (8,)


def models() -> None:
    g = torch.Generator().manual_seed(20261202)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    for i, name in enumerate(("base", "a", "b", "c")):
        d = OUT / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        if name == "base":
            sd = base
        else:  # mlp weights change sparsely (each model its own ~40 %), the rest densely
            sd = {}
            for k, t in base.items():
                noise = 0.1 * torch.randn(t.shape, generator=g)
                if ".mlp." in k:
                    noise *= (torch.rand(t.shape, generator=g) < 0.4).float()
                sd[k] = t + noise
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")


def two_slices(method: str, sources: list[dict], parameters: dict, base: str | None = None,
               second: dict | None = None) -> dict:
    """A recipe in two slices (layers 0-2, 2-4); `second` overrides the second slice's parameters."""
    def sl(lo, hi, params):
        s = {"sources": [dict(src, layer_range=[lo, hi]) for src in sources]}
        if params:
            s["parameters"] = params
        return s
    r = {"merge_method": method, "dtype": "float32", "out_dtype": "float32",
         "slices": [sl(0, 2, None), sl(2, 4, second)], "parameters": parameters}
    if base:
        r["base_model"] = base
    return r


def M(name: str, **params) -> dict:
    return {"model": "{root}/models/" + name, **({"parameters": params} if params else {})}


ATTN_MLP = lambda attn, mlp, rest: [{"filter": "self_attn", "value": attn}, {"filter": "mlp", "value": mlp}, {"value": rest}]  # noqa: E731
BASE = "{root}/models/base"
RECIPES = {
    "nuslerp_base": two_slices("nuslerp", [M("base"), M("a", weight=ATTN_MLP(0.2, 0.8, 0.5)), M("b", weight=0.5)],
                               {"nuslerp_flatten": False}, BASE, second={"nuslerp_row_wise": True}),
    "nuslerp_nobase": two_slices("nuslerp", [M("a", weight=[0.1, 0.9]), M("b", weight=0.5)], {}),
    "multislerp": two_slices("multislerp", [M("base"), M("a", weight=0.3), M("b", weight=ATTN_MLP(0.6, 0.2, 0.4)),
                                            M("c", weight=0.5)], {}, BASE, second={"normalize_weights": False}),
    "karcher": two_slices("karcher", [M("a"), M("b"), M("c")], {"max_iter": ATTN_MLP(3, 20, 10)},
                          second={"tol": 1e-3}),
    "sce": two_slices("sce", [M("base"), M("a"), M("b"), M("c")], {"select_topk": ATTN_MLP(0.5, 0.2, 1.0)}, BASE,
                      second={"select_topk": 0.7}),
    "arcee_fusion": two_slices("arcee_fusion", [M("base"), M("b")], {}, BASE),
    "nearswap": two_slices("nearswap", [M("base"), M("c")], {"t": ATTN_MLP(0.05, 0.001, 0.2)}, BASE,
                           second={"t": [0.0, 0.3]}),
    "ram": two_slices("ram", [M("base"), M("a"), M("b"), M("c")], {"epsilon": ATTN_MLP(1e-5, 0.05, 1e-3)}, BASE),
    "ramplus_tl": two_slices("ramplus_tl", [M("base"), M("a"), M("b"), M("c")],
                             {"r": ATTN_MLP(0.5, 0.3, 0.1), "alpha": 0.5}, BASE, second={"epsilon": 0.02}),
}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    models()
    for name, recipe in RECIPES.items():
        text = yaml.safe_dump(recipe, sort_keys=False)
        (OUT / f"{name}.yaml").write_text(text)
        config = MergeConfiguration.model_validate(yaml.safe_load(text.replace("{root}", str(OUT))))
        with tempfile.TemporaryDirectory() as tmp:
            run_merge(config, tmp, MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
            merged = {}
            for f in sorted(Path(tmp).glob("*.safetensors")):
                merged.update(load_file(str(f)))
        save_file(merged, str(OUT / f"{name}.safetensors"), metadata={"mergekit_version": version("mergekit")})
        print(f"{name}: {len(merged)} tensors")
    (OUT / "README.md").write_text(
        "Whole-recipe merges recorded from mergekit " + version("mergekit") + " by scripts/make_mergekit_recipes.py "
        "(torch " + torch.__version__ + "). models/ are random tiny Llama checkpoints made by that script.\n")


if __name__ == "__main__":
    main()
