"""`tsugiki demo`: the main job on the embedded default models.

Until the evolutionary demo lands, this runs a real merge end to end, offline: it builds a tiny
Llama base and two fine-tuned siblings in Hugging Face format, merges them with DARE-TIES from a
mergekit-style recipe, loads the result with `transformers` and generates from it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk
from tsugiki.merging.writer import AtomicOutputDir

RECIPE = """\
# DARE-TIES merge of two fine-tuned siblings onto their base (the seed paper's PS method, fixed settings)
merge_method: dare_ties
base_model: models/base
models:
  - model: models/variant_0     # fine-tuned on Japanese sentences
    parameters: {{weight: 0.6, density: 0.7}}
  - model: models/variant_1     # fine-tuned on arithmetic
    parameters: {{weight: 0.6, density: 0.7}}
parameters:
  normalize: true
dtype: float32
seed: {seed}
"""


def run_demo(run_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsugiki.factory.lm import TinyLMSpec, build_siblings

    with AtomicOutputDir(run_dir, force=force) as tmp:
        print("building tiny models (Llama, char tokenizer) …", flush=True)
        build_siblings(tmp / "models", n=2, spec=TinyLMSpec(seed=seed), kind="finetuned")
        (tmp / "recipe.yaml").write_text(RECIPE.format(seed=seed))
        recipe = load_recipe(tmp / "recipe.yaml")
        result = merge_to_disk(recipe, tmp / "merged", MergeOptions(), base_dir=tmp)
        print(f"merged {result.tensors} tensors in {result.seconds:.2f}s", flush=True)

        tok = AutoTokenizer.from_pretrained(tmp / "merged")
        prompt = "3+4="
        ids = tok(prompt, return_tensors="pt").input_ids
        samples = {}
        for name in ("models/base", "models/variant_0", "models/variant_1", "merged"):
            model = AutoModelForCausalLM.from_pretrained(tmp / name)
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
            samples[name] = tok.decode(out[0, ids.shape[1]:])  # special tokens shown: tiny models often stop at once
    merged = run_dir / "merged"
    for name, text in samples.items():
        print(f"{name:<18} {prompt!r} → {text!r}")
    print(f"recipe: {run_dir / 'recipe.yaml'}")
    print(f"merged model: {merged}  (load with AutoModelForCausalLM.from_pretrained)")
    return merged
