"""tsugiki.merging.shared_tensors: tensors several model dirs hold bit for bit are stored once (hard links);
the dirs load as before in transformers and tsugiki's checkpoint reader, bit for bit."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tsugiki.factory import TinyLMSpec, build_tiny_lm
from tsugiki.merging.checkpoint import Checkpoint
from tsugiki.merging.shared_tensors import disk_bytes, share

EMBED = "model.embed_tokens.weight"


def _variant(base, out, *, touch_embedding: bool):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if touch_embedding or "embed_tokens" not in name:
                p.add_(0.01)
    model.save_pretrained(out)
    return out


def _state(d):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict().items()}


def test_shared_embedding_is_stored_once_and_loads_bit_for_bit(tmp_path):
    spec = TinyLMSpec("llama", vocab_size=4096, hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128,
                      num_layers=2, max_position_embeddings=64)
    base = build_tiny_lm(tmp_path / "base", spec)
    ft = _variant(base, tmp_path / "ft", touch_embedding=False)
    other = _variant(base, tmp_path / "other", touch_embedding=True)
    models = [base, ft, other]
    before = {d: _state(d) for d in models}
    files_before = {d: load_file(str(d / "model.safetensors")) for d in models}
    embed_bytes = files_before[base][EMBED].numel() * 4
    assert torch.equal(files_before[base][EMBED], files_before[ft][EMBED])  # the fine-tune left it alone
    size_before = disk_bytes(tmp_path)

    store = tmp_path / "store"
    assert [share(d, store, [EMBED, "not.a.tensor"]) for d in models] == [embed_bytes] * 3
    # two distinct embeddings: two store files; base and ft link the same one
    assert len(list(store.iterdir())) == 2
    inode = {d: os.stat(d / "model-00002-of-00002.safetensors").st_ino for d in models}
    assert inode[base] == inode[ft] != inode[other]
    assert size_before - disk_bytes(tmp_path) >= embed_bytes * 0.9  # one copy of the embedding saved (less headers)

    for d in models:
        after = _state(d)
        assert after.keys() == before[d].keys() and all(torch.equal(after[k], before[d][k]) for k in after), d
        with Checkpoint(str(d)) as ckpt:
            assert set(ckpt.names()) == set(files_before[d])
            assert all(torch.equal(ckpt.read(n), t) for n, t in files_before[d].items())
        assert not (d / "model.safetensors").exists() and EMBED not in load_file(str(d / "model-00001-of-00002.safetensors"))
        assert share(d, store, [EMBED]) == 0  # already sharded: left as it is
