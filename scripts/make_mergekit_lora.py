"""Record mergekit 0.1.5's merges of recipes with LoRA sources (``MODEL+ADAPTER``) and its
mergekit-extract-lora adapters, for tests/data/mergekit_lora/.

Run with a Python that has mergekit installed (tsugiki itself never imports mergekit):

    /tmp/scratch/mkvenv/bin/python scripts/make_mergekit_lora.py

It writes three tiny float32 Llama checkpoints under models/ (base; a and b: the base plus dense noise) and,
with peft, four LoRA adapters under adapters/ (random A and B):

- ``q_a``: r 2, alpha 4 on q/v/o_proj, trained "on" a;
- ``mlp_b``: r 4, alpha 8, rsLoRA, on the MLP, with a ``rank_pattern`` and an ``alpha_pattern``, on b;
- ``emb_base``: r 2 on embed_tokens (peft then also stores the whole embedding: ``save_embedding_layers``)
  and k_proj, with lm_head in ``modules_to_save``, on base;
- ``all_a``: r 3 on every linear layer, on a.

For each recipe <name>.yaml (paths written ``{root}/...``) the merged ``<name>.safetensors`` comes from
mergekit's ``run_merge`` with a ``lora_merge_cache``. Then ``mergekit-extract-lora`` extracts adapters of
b from base into extract/<name>/ (rank 2; rank 3 with ``--embed-lora``), kept as written but for the
README and the local base path in adapter_config.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from make_mergekit_recipes import CONFIG, SHAPES  # the same tiny Llama (a script's own folder is on sys.path)

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mergekit_lora"

ADAPTERS = {
    "q_a": ("a", dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj"])),
    "mlp_b": ("b", dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["gate_proj", "up_proj", "down_proj"],
                        rank_pattern={"down_proj": 2}, alpha_pattern={"layers.1.mlp.up_proj": 3})),
    "emb_base": ("base", dict(r=2, lora_alpha=2, target_modules=["embed_tokens", "k_proj"], modules_to_save=["lm_head"])),
    "all_a": ("a", dict(r=3, lora_alpha=6, target_modules="all-linear")),
}


def models() -> None:
    g = torch.Generator().manual_seed(20261230)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    for name in ("base", "a", "b"):
        sd = base if name == "base" else {k: t + 0.1 * torch.randn(t.shape, generator=g) for k, t in base.items()}
        d = OUT / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")


def adapters() -> None:
    torch.manual_seed(20261231)
    for name, (model, kw) in ADAPTERS.items():
        lm = AutoModelForCausalLM.from_pretrained(str(OUT / "models" / model), dtype=torch.float32)
        peft_model = get_peft_model(lm, LoraConfig(**kw))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_" in pname:
                    p.copy_(0.3 * torch.randn(p.shape))
                elif "modules_to_save" in pname:
                    p.add_(0.1 * torch.randn(p.shape))
        d = OUT / "adapters" / name
        peft_model.save_pretrained(str(d))
        _tidy_adapter(d, f"models/{model}")


def _tidy_adapter(d: Path, base: str) -> None:
    (d / "README.md").unlink(missing_ok=True)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def M(ref: str, **params) -> dict:
    return {"model": ref, **({"parameters": params} if params else {})}


def R(model: str, adapter: str | None = None) -> str:
    return "{root}/models/" + model + ("+{root}/adapters/" + adapter if adapter else "")


def two_slices(method: str, sources: list[dict], parameters: dict, base: str | None = None) -> dict:
    r = {"merge_method": method, "dtype": "float32", "out_dtype": "float32", "parameters": parameters,
         "slices": [{"sources": [dict(s, layer_range=[lo, hi]) for s in sources]} for lo, hi in ((0, 2), (2, 4))]}
    if base:
        r["base_model"] = base
    return r


RECIPES = {
    # the adapter alone: mergekit's merged copy of a + q_a, tensor for tensor
    "passthrough_q_a": {"merge_method": "passthrough", "dtype": "float32", "models": [M(R("a", "q_a"))]},
    "passthrough_emb_base": {"merge_method": "passthrough", "dtype": "float32", "models": [M(R("base", "emb_base"))]},
    # several LoRA sources, no base model
    "linear_lora": {"merge_method": "linear", "dtype": "float32",
                    "models": [M(R("a", "q_a"), weight=0.5), M(R("b", "mlp_b"), weight=0.3), M(R("a"), weight=0.2)]},
    # a base model, and an adapter on that same base among the models; the expanded {model, lora} form
    "ties_lora": {"merge_method": "ties", "dtype": "float32", "base_model": R("base"),
                  "parameters": {"density": 0.6, "weight": 0.7},
                  "models": [M({"model": "{root}/models/base", "lora": "{root}/adapters/emb_base"}),
                             M(R("b", "mlp_b"), density=0.8), M(R("a", "all_a"))]},
    # the base model itself with an adapter
    "task_arithmetic_lora_base": {"merge_method": "task_arithmetic", "dtype": "float32", "base_model": R("base", "emb_base"),
                                  "models": [M(R("a", "q_a"), weight=0.6), M(R("b"), weight=0.5)]},
    # slices: slerp between a LoRA source and a plain one, and task arithmetic over LoRA sources
    "slerp_slices_lora": two_slices("slerp", [M(R("a", "all_a")), M(R("b"))], {"t": [0.2, 0.8]}, R("a", "all_a")),
    "task_arithmetic_slices_lora": two_slices("task_arithmetic", [M(R("base")), M(R("a", "q_a"), weight=0.7),
                                                                  M(R("b", "mlp_b"), weight=0.4)], {}, R("base")),
}
EXTRACTIONS = {"b_rank2": ["--max-rank", "2"], "b_rank3_embed": ["--max-rank", "3", "--embed-lora"]}


def extractions() -> None:
    exe = Path(sys.executable).parent / "mergekit-extract-lora"
    for name, args in EXTRACTIONS.items():
        d = OUT / "extract" / name
        subprocess.run([str(exe), "--model", str(OUT / "models" / "b"), "--base-model", str(OUT / "models" / "base"),
                        "--out-path", str(d), *args], check=True, capture_output=True)
        _tidy_adapter(d, "models/base")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    models()
    adapters()
    for name, recipe in RECIPES.items():
        text = yaml.safe_dump(recipe, sort_keys=False)
        (OUT / f"{name}.yaml").write_text(text)
        config = MergeConfiguration.model_validate(yaml.safe_load(text.replace("{root}", str(OUT))))
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
            run_merge(config, tmp, MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                                lora_merge_cache=cache))
            merged = {}
            for f in sorted(Path(tmp).glob("*.safetensors")):
                merged.update(load_file(str(f)))
        save_file(merged, str(OUT / f"{name}.safetensors"), metadata={"mergekit_version": version("mergekit")})
        print(f"{name}: {len(merged)} tensors")
    extractions()
    (OUT / "README.md").write_text(
        "LoRA sources and extracted adapters recorded from mergekit " + version("mergekit") + " (peft "
        + version("peft") + ", torch " + torch.__version__ + ") by scripts/make_mergekit_lora.py. models/ are random "
        "tiny Llama checkpoints and adapters/ random peft LoRA adapters made by that script; extract/ holds "
        "mergekit-extract-lora's adapters of models/b from models/base.\n")


if __name__ == "__main__":
    main()
