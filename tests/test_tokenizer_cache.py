"""One tokenizer load per set of identical tokenizer files, and private copies."""

from __future__ import annotations

import json
import shutil

import pytest

from tsugiki import tokenizer_cache as tc


@pytest.fixture
def counted_loads(monkeypatch):
    """Count AutoTokenizer loads; start with an empty cache."""
    from transformers import AutoTokenizer

    calls = []
    real = AutoTokenizer.from_pretrained

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tc, "_CACHE", {})
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", counting)
    return calls


def _tokenizer_dir(src, dst):
    dst.mkdir()
    for name in tc.TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return dst


def test_identical_tokenizer_files_share_one_load_and_a_change_is_a_new_one(tiny_gemma, tmp_path, counted_loads):
    a = _tokenizer_dir(tiny_gemma.base, tmp_path / "a")
    b = _tokenizer_dir(tiny_gemma.base, tmp_path / "b")
    first, second = tc.load_tokenizer(a), tc.load_tokenizer(b)
    assert len(counted_loads) == 1 and tc.fingerprint(a) == tc.fingerprint(b)
    assert first("猫が3匹")["input_ids"] == second("猫が3匹")["input_ids"]
    config = b / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 77}))
    changed = tc.load_tokenizer(b)
    assert len(counted_loads) == 2 and changed.model_max_length == 77 and first.model_max_length != 77
    assert tc.fingerprint(tmp_path) is None  # no tokenizer files: not cached
    assert tc.fingerprint("google/gemma-3-270m") is None  # a hub id: not cached


def test_copies_are_private(tiny_gemma, counted_loads):
    one = tc.load_tokenizer(tiny_gemma.base)
    pad, side = one.pad_token, one.padding_side
    two = tc.load_tokenizer(tiny_gemma.base)
    two.pad_token, two.padding_side = "<unused0>", ("right" if side == "left" else "left")
    three = tc.load_tokenizer(tiny_gemma.base)
    assert (one.pad_token, one.padding_side) == (pad, side) == (three.pad_token, three.padding_side)
    assert two.pad_token_id != one.pad_token_id
    padded = [one(["a", "a b c"], padding=True)["input_ids"][0], two(["a", "a b c"], padding=True)["input_ids"][0]]
    assert padded[0] != padded[1] and len(counted_loads) == 1
