"""A model folder's own code never runs (tsugiki.hf_load): a folder whose config names code is refused in
one line by every command that loads models, even with `y` on stdin for transformers' "run the custom
code?" prompt; merge and inspect read such a folder without importing anything, and a merged output's
configs name no code; no load in the source bypasses the helper."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tsugiki import hf_load
from tsugiki.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
EVIL = "open({marker!r}, 'w').write('ran')\nraise SystemExit('the model folder code ran')\n"


def run_cli(*args, cwd=None):
    """The real CLI in a subprocess, answering `y` to any prompt."""
    return subprocess.run([sys.executable, "-m", "tsugiki.cli", *map(str, args)], input="y\ny\ny\n", capture_output=True,
                          text=True, env={**os.environ, **OFFLINE}, cwd=cwd)


def evil_copy(src: Path, dst: Path, config: str = "config.json") -> Path:
    """A copy of model dir ``src`` whose ``config`` has an auto_map naming a .py file in the folder that, when
    imported, writes ``dst``.MARKER (and, with an unknown class, transformers would ask to run it)."""
    shutil.copytree(src, dst)
    module = "modeling_evil" if config == "config.json" else "tokenization_evil"
    (dst / f"{module}.py").write_text(EVIL.format(marker=str(marker(dst))))
    data = json.loads((dst / config).read_text())
    if config == "config.json":
        data.update(model_type="evil", auto_map={"AutoConfig": f"{module}.EvilConfig",
                                                 "AutoModelForCausalLM": f"{module}.EvilForCausalLM"})
    else:
        data.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [f"{module}.EvilTokenizer", None]})
    (dst / config).write_text(json.dumps(data, indent=2))
    return dst


def marker(model_dir: Path) -> Path:
    return model_dir.with_name(model_dir.name + ".MARKER")


def assert_refused(res, model_dir: Path, config: str, module: str):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{model_dir / config}: auto_map names the model's own code ({module}.py)" in lines[0], lines[0]
    assert not marker(model_dir).exists()


@pytest.fixture(scope="module")
def evil(tiny_siblings, tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    return {"config": evil_copy(tiny_siblings.base, root / "config_code"),
            "tokenizer": evil_copy(tiny_siblings.base, root / "tokenizer_code", "tokenizer_config.json")}


# ------------------------------------------------------------------------------ refused where models load
@pytest.mark.parametrize("which,config,module", [("config", "config.json", "modeling_evil"),
                                                 ("tokenizer", "tokenizer_config.json", "tokenization_evil")])
def test_eval_refuses_a_model_folder_that_names_code(evil, tmp_path, which, config, module):
    res = run_cli("eval", "--model", evil[which], "--results-dir", tmp_path / "results", "-q")
    assert_refused(res, evil[which], config, module)


def test_evolve_refuses_a_source_that_names_code(evil, tiny_siblings, tmp_path):
    import yaml

    cfg = {"name": "x", "sources": {"base": str(evil["config"]), "v": str(tiny_siblings.variants[0])},
           "space": {"kind": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["v"],
                     "params": {"weight": [0, 1]}},
           "fitness": {"function": "answer_loglik", "data": {"generator": ["arithmetic"], "split": "fitness", "n": 4}},
           "search": {"seed": 0, "population": 4, "generations": 1}}
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(cfg))
    res = run_cli("evolve", tmp_path / "evolve.yaml", "-o", tmp_path / "run", "-q")
    assert_refused(res, evil["config"], "config.json", "modeling_evil")
    assert "sources.base" in res.stderr and not (tmp_path / "run").exists()


def test_every_loader_refuses_before_importing(evil):
    """The load paths themselves (not only the commands' early checks) refuse, vLLM's before it is imported."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsugiki.engines import EngineOptions
    from tsugiki.engines.hf import HFEngine
    from tsugiki.engines.vllm import VLLMEngine
    from tsugiki.tokenizer_cache import load_tokenizer
    from tsugiki.vlm.generate import VQAPredictor

    for d in evil.values():
        for load in (lambda: load_tokenizer(d), lambda: HFEngine.open(d, EngineOptions()),
                     lambda: VLLMEngine.open(str(d), EngineOptions()), lambda: VQAPredictor.from_pretrained(d),
                     lambda: hf_load.from_pretrained(AutoModelForCausalLM, d),
                     lambda: hf_load.from_pretrained(AutoTokenizer, d)):
            with pytest.raises(CheckpointError, match=r"auto_map names the model's own code"):
                load()
        assert not marker(d).exists()


def test_what_names_code(tmp_path):
    assert hf_load.code_named("google/gemma-3-270m") is None and hf_load.code_named(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text('{"auto_map": {"AutoImageProcessor": "img.Proc"}}')
    assert hf_load.code_named(tmp_path).startswith(f"{tmp_path / 'preprocessor_config.json'}: auto_map names "
                                                   "the model's own code (img.py)")
    (tmp_path / "preprocessor_config.json").write_text('{"auto_map": {}}')  # empty: names nothing
    (tmp_path / "tokenizer_config.json").write_text('{"auto_map": ["tok.A", "tok_fast.B"]}')  # the old list form
    assert "(tok.py, tok_fast.py)" in hf_load.code_named(tmp_path)
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["my_unet", "MyUNet"], "vae": ["diffusers", "AutoencoderKL"]}
    (pipe / "model_index.json").write_text(json.dumps(index))
    assert hf_load.code_named(pipe) is None  # the module is not a file of the folder: diffusers itself refuses it
    (pipe / "unet" / "my_unet.py").write_text("")
    assert hf_load.code_named(pipe).startswith(f"{pipe / 'model_index.json'}: unet names the pipeline's own code "
                                               "(unet/my_unet.py)")
    (pipe / "unet" / "my_unet.py").unlink()
    (pipe / "unet" / "config.json").write_text('{"auto_map": {"AutoModel": "m.U"}}')
    assert hf_load.code_named(pipe).startswith(f"{pipe / 'unet' / 'config.json'}: auto_map")


def test_code_the_check_missed_is_refused_by_transformers_in_one_line(evil, monkeypatch):
    """trust_remote_code=False is what transformers sees (a hub id's code is refused the same way, unasked)."""
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setattr(hf_load, "check_no_code", lambda path: None)
    for cls, d in ((AutoConfig, evil["config"]), (AutoTokenizer, evil["tokenizer"])):
        with pytest.raises(CheckpointError, match=f"^{d}: needs its own code to load \\({cls.__name__}\\); tsugiki never"):
            hf_load.from_pretrained(cls, d)
        assert not marker(d).exists()


def test_trust_remote_code_false_where_the_class_takes_it(tmp_path):
    def fake(module):
        return type("Fake", (), {"__module__": module, "from_pretrained": classmethod(lambda cls, path, **kw: kw)})

    assert hf_load.from_pretrained(fake("transformers.models.auto.x"), tmp_path, dtype=1) == {"dtype": 1, "trust_remote_code": False}
    assert hf_load.from_pretrained(fake("diffusers.pipelines.x"), tmp_path) == {"trust_remote_code": False}
    assert hf_load.from_pretrained(fake("diffusers.models.unets.x"), tmp_path) == {}  # would reach its config as unknown


# ------------------------------------------------------------------------------ merge and inspect run nothing
def test_merge_reads_a_folder_that_names_code_and_writes_configs_that_name_none(evil, tiny_siblings, tmp_path):
    both = evil_copy(evil["tokenizer"], tmp_path / "both")  # config and tokenizer name code
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\ntokenizer_source: {both}\nmodels:\n"
                      f"  - {{model: {evil['config']}, parameters: {{weight: 0.5}}}}\n"
                      f"  - {{model: {both}, parameters: {{weight: 0.5}}}}\n")
    res = run_cli("merge", recipe, "-o", tmp_path / "out", "-q")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text()), name
    card = (out / "README.md").read_text()
    assert "## Custom code\n`auto_map` was removed from `config.json` (it named modeling_evil.py); `tokenizer_config.json` " \
           "(it named tokenization_evil.py)" in card
    res = run_cli("inspect", both)
    assert res.returncode == 0, res.stderr
    assert not any(marker(d).exists() for d in (evil["config"], evil["tokenizer"], both))
    assert json.loads((evil["config"] / "config.json").read_text())["auto_map"]  # the source is as it was


def test_merged_output_of_plain_sources_names_no_code(tiny_siblings, tmp_path):
    from tsugiki.merging.recipe import Recipe
    from tsugiki.merging.to_disk import MergeOptions, merge_to_disk

    recipe = Recipe.from_dict({"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 0.5}}
                                                                    for p in tiny_siblings.all[:2]]})
    out = merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False)).out
    assert not any("auto_map" in json.loads(f.read_text()) for f in out.glob("*.json") if f.name in hf_load.CODE_CONFIGS)
    assert "Custom code" not in (out / "README.md").read_text()


# ------------------------------------------------------------------------------ no load bypasses the helper
# tsugiki's own classmethods named from_pretrained, which load through tsugiki.hf_load themselves
OWN_LOADERS = {"VQAPredictor", "VLMPredictor"}
HELPER = REPO / "tsugiki" / "hf_load.py"


def load_calls(path: Path) -> list[tuple[int, str]]:
    """(line, what) of each ``X.from_pretrained(...)`` and ``LLM(...)`` / ``X.LLM(...)`` call in ``path``."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "from_pretrained":
            calls.append((node.lineno, f"{ast.unparse(f.value)}.from_pretrained"))
        elif (isinstance(f, ast.Name) and f.id == "LLM") or (isinstance(f, ast.Attribute) and f.attr == "LLM"):
            calls.append((node.lineno, ast.unparse(f)))
    return sorted(calls)


def test_no_load_bypasses_the_helper():
    files = sorted(p for d in ("tsugiki", "benchmarks") for p in (REPO / d).rglob("*.py"))
    bypass = [f"{p.relative_to(REPO)}:{line}: {what}" for p in files if p != HELPER for line, what in load_calls(p)
              if what.removesuffix(".from_pretrained") not in OWN_LOADERS]
    assert not bypass, "load through tsugiki.hf_load (it refuses code in model folders):\n" + "\n".join(bypass)
    # the scan sees the helper's own calls: it would see a bypass
    assert {what for _, what in load_calls(HELPER)} == {"cls.from_pretrained", "PeftModel.from_pretrained", "vllm.LLM"}
