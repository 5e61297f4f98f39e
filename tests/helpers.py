"""Small helpers shared by test modules (the test tree mirrors the package: tests/merging/ tests
tsugiki/merging/, and so on; this file and conftest.py sit at its root, which pytest puts on sys.path)."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"


def vllm_or_skip():
    """The vLLM tests run wherever vLLM is installed; tox installs it and sets TSUGIKI_REQUIRE_VLLM=1, so
    there a missing vLLM is a failure, not a skip."""
    from tsugiki.engines import ENGINES

    if ENGINES.get("vllm").available():
        return
    if os.environ.get("TSUGIKI_REQUIRE_VLLM") == "1":
        pytest.fail("TSUGIKI_REQUIRE_VLLM=1 but vLLM is not installed")
    pytest.skip("vLLM is not installed")


def weights(path):
    """Every tensor of a model dir, read with the safetensors library (independent of tsugiki's reader)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def copy_model(src, dst, edit):
    """A copy of model dir `src` whose tensors pass through `edit(dict) -> dict`."""
    shutil.copytree(src, dst)
    tensors = weights(dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    save_file(edit(tensors), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# A recipe for each merge method added after mergekit's first twelve, from a base and two other models:
# method -> (uses the base, [(which model, parameters)], method-level parameters as YAML flow). "base"
# is the base model, 0 and 1 the others.
NEW_METHODS = {
    "nuslerp": (True, [("base", "{}"), (0, "{weight: 0.3}"), (1, "{weight: 0.6}")], "{nuslerp_flatten: false}"),
    "multislerp": (True, [("base", "{}"), (0, "{weight: 0.3}"), (1, "{weight: 0.6}")], "{}"),
    "karcher": (False, [("base", "{}"), (0, "{}"), (1, "{}")], "{max_iter: 5}"),
    "sce": (True, [("base", "{}"), (0, "{}"), (1, "{}")], "{select_topk: 0.5}"),
    "arcee_fusion": (True, [("base", "{}"), (0, "{}")], "{}"),
    "nearswap": (True, [("base", "{}"), (1, "{}")], "{t: 0.01}"),
    "ram": (True, [("base", "{}"), (0, "{}"), (1, "{}")], "{epsilon: 0.001}"),
    "ramplus_tl": (True, [("base", "{}"), (0, "{}"), (1, "{}")], "{r: 0.5, alpha: 1.0}"),
}


def new_method_recipe(method, base, others):
    """Recipe text of NEW_METHODS[method] with model paths filled in."""
    uses_base, models, params = NEW_METHODS[method]
    path = lambda which: base if which == "base" else others[which]  # noqa: E731
    lines = [f"merge_method: {method}"] + ([f"base_model: {base}"] if uses_base else []) + [f"parameters: {params}", "models:"]
    lines += [f"  - {{model: {path(w)}, parameters: {p}}}" for w, p in models]
    return "\n".join(lines) + "\n"


EVOLVE_CLI = textwrap.dedent("""
    import argparse, sys
    from tsugiki.commands import evolve
    p = argparse.ArgumentParser()
    evolve.register(p.add_subparsers())
    a = p.parse_args(sys.argv[1:])
    sys.exit(a.func(a))
""")


def evolve_and_kill(args, watched, lines: int) -> bool:
    """Start `tsugiki evolve ARGS -q --allow-code` in a subprocess and SIGKILL it once the file ``watched``
    has ``lines`` lines; returns whether it was killed (False: it finished first)."""
    proc = subprocess.Popen([sys.executable, "-c", EVOLVE_CLI, "evolve", *args, "-q", "--allow-code"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            if watched.exists() and watched.read_bytes().count(b"\n") >= lines:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        assert proc.returncode == 0, proc.stderr.read().decode()
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def write_lm_eval_task(folder, name, rows, spec, version=1.0):
    """An lm-eval task YAML ``folder/name.yaml`` over a local JSONL of ``rows`` (named by absolute path, as
    lm-eval reads data_files from the working folder); ``spec``: the task's other keys."""
    import json

    import yaml

    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    doc = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
           "test_split": "test", "metadata": {"version": version}, **spec}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
