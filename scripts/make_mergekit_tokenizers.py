"""Record mergekit 0.1.5's merges of models whose tokenizers differ, for tests/data/mergekit_tokenizers/
(issue 30: ``tokenizer_source: base`` cutting a padded vocabulary, ``union``, token surgery, slices).

Run with a Python that has mergekit installed (tsugiki itself never imports mergekit):

    PYTHONHASHSEED=0 /tmp/scratch/mkvenv/bin/python scripts/make_mergekit_tokenizers.py

(mergekit orders a union's new tokens by set and dict iteration: the seed fixes the recording; tsugiki's
order is deterministic, and the tests compare rows token by token.)

It writes four tiny Llama checkpoints under models/, each with a word-level fast tokenizer (tokenizer.json):
``base`` (11 tokens, embeddings padded to 16 rows), ``twin`` (base's tokenizer and padding, other weights),
``m1`` (base's tokens in another order, without ``h``, with ``x`` and ``y``) and ``m2`` (without ``g``,
with ``y``, ``z`` and a special ``<extra>``): vocabularies that differ in both directions. For each recipe
``<name>.yaml`` (models as ``{root}/models/...``) it records mergekit's merged ``<name>.safetensors``, its
config's ``vocab_size`` and its saved tokenizer's vocabulary in ``<name>.json``.
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

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mergekit_tokenizers"
SPECIAL = ["<unk>", "<s>", "</s>"]
WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
VOCABS = {  # ordinary tokens in id order, after the three specials
    "base": WORDS,
    "twin": WORDS,
    "m1": ["x", "b", "a", "y", "d", "c", "f", "e", "g"],
    "m2": ["a", "b", "c", "d", "e", "f", "h", "y", "z"],
}
ADDED = {"m2": ["<extra>"]}  # special added tokens after the vocabulary
ROWS = {"base": 16, "twin": 16}  # embedding rows: padded beyond the tokenizer in base and twin
HIDDEN, LAYERS = 8, 2


def tokenizer_files(d: Path, words: list[str], added: list[str]) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        fast.add_special_tokens({"additional_special_tokens": added})
    fast.save_pretrained(str(d))
    return len(fast)


def models() -> None:
    g = torch.Generator().manual_seed(20261207)
    for name, words in VOCABS.items():
        d = OUT / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        n = tokenizer_files(d, words, ADDED.get(name, []))
        rows = ROWS.get(name, n)
        sd = {"model.embed_tokens.weight": torch.randn(rows, HIDDEN, generator=g),
              "lm_head.weight": torch.randn(rows, HIDDEN, generator=g), "model.norm.weight": torch.randn(HIDDEN, generator=g)}
        for i in range(LAYERS):
            for part, shape in {"self_attn.q_proj": (8, 8), "self_attn.k_proj": (4, 8), "self_attn.v_proj": (4, 8),
                                "self_attn.o_proj": (8, 8), "mlp.gate_proj": (16, 8), "mlp.up_proj": (16, 8),
                                "mlp.down_proj": (8, 16)}.items():
                sd[f"model.layers.{i}.{part}.weight"] = torch.randn(shape, generator=g)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                sd[f"model.layers.{i}.{norm}.weight"] = torch.randn(HIDDEN, generator=g)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
                  "intermediate_size": 16, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "vocab_size": rows, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
        (d / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def M(name: str, **params) -> dict:
    return {"model": "{root}/models/" + name, **({"parameters": params} if params else {})}


BASE = "{root}/models/base"
COMMON = {"dtype": "float32", "out_dtype": "float32"}
RECIPES = {
    # the defect: base's tokenizer has 11 tokens, its embeddings 16 rows -> mergekit cuts to 11
    "base_source_cuts_padding": {"merge_method": "linear", "models": [M("base", weight=0.6), M("twin", weight=0.4)],
                                 "tokenizer_source": "base", **COMMON},
    "base_source_permutes": {"merge_method": "task_arithmetic", "base_model": BASE,
                             "models": [M("m1", weight=0.5), M("m2", weight=0.7)], "tokenizer_source": "base", **COMMON},
    "model_source": {"merge_method": "linear", "base_model": BASE,
                     "models": [M("base", weight=0.3), M("m1", weight=0.3), M("m2", weight=0.4)],
                     "tokenizer_source": "{root}/models/m2", **COMMON},
    # the other defect: a tokenizer from a model outside the merge (mergekit permutes into its vocabulary)
    "outside_source": {"merge_method": "linear", "models": [M("base", weight=0.5), M("m1", weight=0.5)],
                       "tokenizer_source": "{root}/models/m2", **COMMON},
    "union": {"merge_method": "ties", "base_model": BASE,
              "models": [M("m1", weight=0.6, density=0.5), M("m2", weight=0.4, density=0.7)],
              "tokenizer_source": "union", **COMMON},
    "union_linear": {"merge_method": "linear", "base_model": BASE,
                     "models": [M("base", weight=0.2), M("m1", weight=0.5), M("m2", weight=0.3)],
                     "tokenizer_source": "union", **COMMON},
    "surgery": {"merge_method": "task_arithmetic", "base_model": BASE,
                "models": [M("m1", weight=0.5), M("m2", weight=0.5)],
                "tokenizer": {"source": "union", "pad_to_multiple_of": 8, "tokens": {
                    "a": {"source": "{root}/models/m2", "force": True},
                    "x": {"source": {"kind": "zero"}},
                    "z": {"source": {"kind": "model_token", "model": "{root}/models/m1", "token": "y"}},
                    "<new>": {"source": {"kind": "model_token", "model": BASE, "token_id": 4}},
                    "c": {"source": "{root}/models/m1"},
                }}, **COMMON},
    "surgery_base_source": {"merge_method": "linear", "base_model": BASE,
                            "models": [M("base", weight=0.5), M("m1", weight=0.5)],
                            "tokenizer": {"source": "base", "pad_to_multiple_of": 4,
                                          "tokens": {"b": {"source": "{root}/models/m1", "force": True}}}, **COMMON},
    "union_slices": {"merge_method": "linear", "base_model": BASE, "tokenizer_source": "union", **COMMON,
                     "slices": [{"sources": [dict(M("base", weight=0.5), layer_range=[0, 1]),
                                             dict(M("m1", weight=0.5), layer_range=[0, 1])]},
                                {"sources": [dict(M("base", weight=0.5), layer_range=[1, 2]),
                                             dict(M("m2", weight=0.5), layer_range=[1, 2])]}]},
}


def main() -> None:
    from transformers import AutoTokenizer

    if OUT.exists():
        shutil.rmtree(OUT)
    models()
    for name, recipe in RECIPES.items():
        text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
        (OUT / f"{name}.yaml").write_text(text)
        config = MergeConfiguration.model_validate(yaml.safe_load(text.replace("{root}", str(OUT))))
        with tempfile.TemporaryDirectory() as tmp:
            run_merge(config, tmp, MergeOptions(copy_tokenizer=True, write_model_card=False, quiet=True))
            merged = {}
            for f in sorted(Path(tmp).glob("*.safetensors")):
                merged.update(load_file(str(f)))
            vocab = AutoTokenizer.from_pretrained(tmp).get_vocab()
            vocab_size = json.loads((Path(tmp) / "config.json").read_text())["vocab_size"]
        save_file(merged, str(OUT / f"{name}.safetensors"), metadata={"mergekit_version": version("mergekit")})
        (OUT / f"{name}.json").write_text(json.dumps({"vocab_size": vocab_size, "vocab": vocab}, sort_keys=True) + "\n")
        print(f"{name}: {len(merged)} tensors, vocab {len(vocab)}, vocab_size {vocab_size}")
    (OUT / "README.md").write_text(
        "Merges of models with different tokenizers recorded from mergekit " + version("mergekit") + " by "
        "scripts/make_mergekit_tokenizers.py (torch " + torch.__version__ + "). models/ are random tiny Llama "
        "checkpoints with word-level tokenizers made by that script.\n")


if __name__ == "__main__":
    main()
