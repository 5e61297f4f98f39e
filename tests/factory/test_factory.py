"""The tiny-model factory builds real, loadable, deterministic Hugging Face checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tsugiki.factory import (
    TinyLMSpec,
    build_char_tokenizer,
    build_mismatched,
    build_siblings,
    build_tiny_lm,
)

JA_TEXT = "今日は東京で雨です。「こんにちは、世界！」カタカナ・ー　１２３ Hello, 3+4=7\n"


def _tensors(ckpt) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(f, "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def _file_bytes(ckpt) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(ckpt.glob("*.safetensors"))}


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_japanese_and_ascii():
    tok = build_char_tokenizer()
    ids = tok.encode(JA_TEXT, add_special_tokens=False)
    assert len(ids) == len(JA_TEXT)  # one token per character
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == JA_TEXT
    assert tok.encode("ab")[0] == tok.bos_token_id  # <s> prepended by default


def test_tokenizer_is_deterministic_padded_and_maps_unknown_to_unk():
    tok = build_char_tokenizer()
    assert tok.get_vocab() == build_char_tokenizer().get_vocab()
    assert len(tok) % 64 == 0
    assert [tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token] == [
        "<unk>", "<s>", "</s>", "<pad>",
    ]
    assert len({tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 4
    ids = tok.encode("a😀b", add_special_tokens=False)
    assert ids[1] == tok.unk_token_id and len(ids) == 3
    assert len(build_char_tokenizer(len(tok) + 1)) == len(tok) + 64


# --------------------------------------------------------------------------- models


def test_one_list_of_tiny_architectures(tmp_path, capsys):
    """factory.archs is what the factory builds and `tsugiki tiny lm|vlm --arch` offers (an evolve
    config's tiny_models.arch: test_evolution_schema)."""
    from tsugiki.cli import build_parser
    from tsugiki.factory.archs import llava_text_arch_names, tiny_arch_names
    from tsugiki.factory.lm import config_json

    assert tiny_arch_names() == ["llama", "mistral", "qwen2"] and llava_text_arch_names() == ["llama", "mistral"]
    for name in tiny_arch_names():
        assert config_json(TinyLMSpec(arch=name))["model_type"] == name
    parser = build_parser()
    assert parser.parse_args(["tiny", "lm", "-o", "x", "--arch", "qwen2"]).arch == "qwen2"
    assert parser.parse_args(["tiny", "vlm", "-o", "x", "--arch", "llama"]).arch == "llama"
    with pytest.raises(SystemExit):
        parser.parse_args(["tiny", "vlm", "-o", "x", "--arch", "qwen2"])
    assert "invalid choice: 'qwen2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown tiny architecture 'lama'; did you mean 'llama'\?"):
        build_tiny_lm(tmp_path / "x", TinyLMSpec(arch="lama"))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_build_tiny_lm_loads_and_generates(tmp_path, arch):
    spec = TinyLMSpec(arch=arch, tie_word_embeddings=arch == "qwen2")
    out = build_tiny_lm(tmp_path / arch, spec)
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    cfg = AutoConfig.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert cfg.model_type == arch
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (32, 4)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32
    inputs = tok("こんにちは", return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert isinstance(tok.decode(gen[0]), str)
    assert ("lm_head.weight" in _tensors(out)) != spec.tie_word_embeddings


def test_build_tiny_lm_dtype(tmp_path):
    out = build_tiny_lm(tmp_path / "bf16", torch_dtype=torch.bfloat16)
    assert {t.dtype for t in _tensors(out).values()} == {torch.bfloat16}


def test_build_tiny_lm_is_deterministic_and_seeded(tmp_path):
    rng_before = torch.get_rng_state()
    a = _file_bytes(build_tiny_lm(tmp_path / "a"))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert a == _file_bytes(build_tiny_lm(tmp_path / "b"))
    assert a != _file_bytes(build_tiny_lm(tmp_path / "c", TinyLMSpec(seed=1)))


@pytest.mark.parametrize("kind", ["perturbed", "finetuned"])
def test_build_siblings_is_deterministic(tmp_path, kind):
    s1 = build_siblings(tmp_path / "one", n=2, kind=kind)
    s2 = build_siblings(tmp_path / "two", n=2, kind=kind)
    for p1, p2 in zip(s1.all, s2.all, strict=True):
        assert _file_bytes(p1) == _file_bytes(p2)


def _check_siblings(sibs, n):
    assert len(sibs.variants) == n
    base = _tensors(sibs.base)
    variants = [_tensors(v) for v in sibs.variants]
    for v in variants:
        assert v.keys() == base.keys()
        assert all(v[k].shape == base[k].shape and v[k].dtype == base[k].dtype for k in base)
        assert any(not torch.equal(v[k], base[k]) for k in base)
    for i in range(n):
        for j in range(i + 1, n):
            assert any(not torch.equal(variants[i][k], variants[j][k]) for k in base)
    return base, variants


def test_perturbed_siblings_fixture(tiny_siblings):
    base, variants = _check_siblings(tiny_siblings, 3)
    k = "model.layers.0.mlp.up_proj.weight"
    for i, v in enumerate(variants):
        delta = v[k] - base[k]
        rel = (delta.std() / base[k].std()).item()
        assert 0.001 < rel < 0.1  # a small delta
        changed = (delta != 0).float().mean().item()
        assert (0.2 < changed < 0.4) if i % 2 else changed > 0.99  # odd variants: sparse
    assert AutoConfig.from_pretrained(tiny_siblings.variants[0]).model_type == "llama"


def test_finetuned_siblings_fixture(tiny_mistral_siblings):
    base, variants = _check_siblings(tiny_mistral_siblings, 2)
    assert AutoConfig.from_pretrained(tiny_mistral_siblings.base).model_type == "mistral"
    # fine-tuning on arithmetic lowers the loss on arithmetic text compared with the base
    tok = AutoTokenizer.from_pretrained(tiny_mistral_siblings.base)
    batch = tok(["3+4=7</s>", "2+5=7</s>", "8+1=9</s>"], return_tensors="pt")

    def loss(path):
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            return model(**batch, labels=batch["input_ids"]).loss.item()

    assert loss(tiny_mistral_siblings.variants[1]) < loss(tiny_mistral_siblings.base) - 1.0


def test_sharded_fixture_has_complete_index(tiny_sharded_lm):
    index = json.loads((tiny_sharded_lm / "model.safetensors.index.json").read_text())
    shards = sorted(tiny_sharded_lm.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    tensors = {}
    for s in shards:
        with safe_open(s, "pt") as sf:
            for k in sf.keys():
                assert index["weight_map"][k] == s.name
                tensors[k] = sf.get_tensor(k)
    assert set(index["weight_map"]) == set(tensors)
    model = AutoModelForCausalLM.from_pretrained(tiny_sharded_lm)
    assert set(model.state_dict()) == set(tensors)
    assert all(torch.equal(model.state_dict()[k], t) for k, t in tensors.items())


def test_mismatched_fixture_differs_in_hidden(tiny_mismatched_lm, tiny_siblings):
    a = AutoConfig.from_pretrained(tiny_siblings.base)
    b = AutoConfig.from_pretrained(tiny_mismatched_lm)
    assert (a.hidden_size, b.hidden_size) == (32, 48)
    assert (a.num_hidden_layers, a.vocab_size) == (b.num_hidden_layers, b.vocab_size)


@pytest.mark.parametrize(
    "what, attr", [("hidden", "hidden_size"), ("layers", "num_hidden_layers"), ("vocab", "vocab_size")]
)
def test_build_mismatched_changes_only_the_named_dimension(tmp_path, what, attr):
    attrs = ["hidden_size", "num_hidden_layers", "vocab_size"]
    base = AutoConfig.from_pretrained(build_tiny_lm(tmp_path / "base"))
    out = build_mismatched(tmp_path / what, TinyLMSpec(), what)
    other = AutoConfig.from_pretrained(out)
    for name in attrs:
        assert (getattr(other, name) != getattr(base, name)) == (name == attr)
    assert len(AutoTokenizer.from_pretrained(out)) == other.vocab_size
    AutoModelForCausalLM.from_pretrained(out)  # loads


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_lm(tmp_path / "x", TinyLMSpec(arch="gpt2"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_siblings(tmp_path / "y", kind="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_mismatched(tmp_path / "z", TinyLMSpec(), "heads")  # type: ignore[arg-type]
