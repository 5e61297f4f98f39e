"""Faults a user meets: killed runs (debris, resume), disk full and I/O errors, sources changing under a
merge. Real faults where they can be made (SIGKILL of subprocesses, a second process holding a lock),
patched writes raising ENOSPC/EIO where they cannot."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import weights
from tsugiki.cli import main
from tsugiki.errors import CheckpointError, OutputWriteError
from tsugiki.factory.lm import TinyLMSpec, build_siblings
from tsugiki.merging.output_dir import OWNER_FILE, AtomicOutputDir, sweep_debris

# ------------------------------------------------------------------ AtomicOutputDir: owners and debris
DIE_INSIDE = """
import os, signal, sys
from tsugiki.merging.output_dir import AtomicOutputDir
with AtomicOutputDir(sys.argv[1], force=True) as tmp:
    (tmp / "half.safetensors").write_bytes(b"x" * 100)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _die_inside(out: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", DIE_INSIDE, str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_dead_runs_debris_is_removed_with_one_line_each(tmp_path, caplog):
    out = tmp_path / "out"
    _die_inside(out)
    first = _debris(tmp_path)
    _die_inside(out)  # the second run removed the first one's temp dir, then died too
    assert len(_debris(tmp_path)) == 1 and _debris(tmp_path) != first and not out.exists()
    (tmp_path / ".out.tmp-older").mkdir()  # a temp dir without an owner file (an older tsugiki's)
    caplog.clear()
    with AtomicOutputDir(out) as tmp:
        (tmp / "a").write_text("1")
    assert _debris(tmp_path) == [] and (out / "a").read_text() == "1"
    removed = [r.getMessage() for r in caplog.records if "no longer running" in r.getMessage()]
    assert len(removed) == 2 and all(str(out) in m for m in removed)
    assert not (out / OWNER_FILE).exists()


def test_live_owners_temp_dir_and_other_outputs_are_left_alone(tmp_path):
    out = tmp_path / "out"
    _die_inside(tmp_path / "other")  # debris of another output: not this run's to remove
    with AtomicOutputDir(out) as live_tmp:  # a live owner (this process, through another lock)
        assert sweep_debris(out) == []
        assert live_tmp.exists()
    assert len(_debris(tmp_path)) == 1 and (out).exists()


def test_parked_old_output_is_restored_when_its_replacement_never_arrived(tmp_path):
    out = tmp_path / "out"
    with AtomicOutputDir(out) as tmp:
        (tmp / "a").write_text("old")
    # what a kill between the two renames of a --force commit leaves: OUT parked in .old-*/x by a dead owner
    parked = tmp_path / ".out.old-abcd"
    parked.mkdir()
    os.replace(out, parked / "x")
    (parked / OWNER_FILE).write_text("999999")
    assert sweep_debris(out) == [parked]
    assert (out / "a").read_text() == "old" and _debris(tmp_path) == []


# ------------------------------------------------------------------ `tsugiki merge` killed and rerun
@pytest.fixture(scope="module")
def mid_siblings(tmp_path_factory):
    """Two ~50 MB fp32 models: a merge takes long enough to be killed in the middle."""
    spec = TinyLMSpec(hidden_size=512, intermediate_size=1024, num_layers=4, num_heads=8, num_kv_heads=4, vocab_size=4096)
    return build_siblings(tmp_path_factory.mktemp("mid"), n=1, spec=spec, kind="perturbed")


def _recipe(tmp_path, sib) -> Path:
    r = tmp_path / "ties.yaml"
    r.write_text(f"merge_method: ties\nbase_model: {sib.base}\nmodels:\n  - model: {sib.variants[0]}\n"
                 f"    parameters: {{weight: 0.7, density: 0.5}}\nparameters: {{normalize: true}}\ndtype: float32\n")
    return r


def _merge_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tsugiki.cli", "merge", str(recipe), "-o", str(out), "-q", "--max-shard-size", "8M", *extra]


def _kill_when(cmd: list[str], ready) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` is true (or when it has finished)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _shards(parent: Path) -> list[Path]:
    return [f for d in parent.glob(".out.tmp-*") for f in d.glob("*.safetensors")]


def test_sigkilled_merge_rerun_is_complete_equal_and_leaves_no_temp_dir(mid_siblings, tmp_path, caplog):
    recipe = _recipe(tmp_path, mid_siblings)
    ref = tmp_path / "ref"
    assert main(["merge", str(recipe), "-o", str(ref), "-q", "--max-shard-size", "8M"]) == 0
    expected = weights(ref)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    points = {
        "temp dir made": lambda: any(work.glob(".out.tmp-*")),
        "first shard": lambda: len(_shards(work)) >= 1,
        "third shard": lambda: len(_shards(work)) >= 3,
        "side files": lambda: any(work.glob(".out.tmp-*/tsugiki_recipe.yaml")),
    }
    left = 0
    for name, ready in points.items():
        _kill_when(_merge_cmd(recipe, out), ready)
        assert not out.exists() or (out / "README.md").exists(), f"{name}: a partial output dir"
        debris = _debris(work)
        left += len(debris)
        if out.exists():  # the kill came after the commit: not this point's case
            continue
        caplog.clear()
        assert main(["merge", str(recipe), "-o", str(out), "-q", "--max-shard-size", "8M"]) == 0, name
        assert _debris(work) == [], name
        said = [r.getMessage() for r in caplog.records if "no longer running" in r.getMessage()]
        assert len(said) == len(debris) and all(d in line for d, line in zip(debris, said)), (name, said)
        got = weights(out)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), name
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir()), name
        for f in out.iterdir():
            if f.name.endswith((".json", ".yaml", ".md")) and f.name != "README.md":
                assert f.read_bytes() == (ref / f.name).read_bytes(), (name, f.name)
        shutil.rmtree(out)
    assert left >= 3  # the kills really did land mid-merge
    # a killed --force keeps the old output, and the rerun replaces it
    if not out.exists():
        assert main(["merge", str(recipe), "-o", str(out), "-q"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    _kill_when(_merge_cmd(recipe, out, "--force"), lambda: len(_shards(work)) >= 2)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert len(_debris(work)) == 1
    assert main(["merge", str(recipe), "-o", str(out), "-q", "--max-shard-size", "8M", "--force"]) == 0
    assert _debris(work) == [] and weights(out).keys() == expected.keys()


# ------------------------------------------------------------------ disk full, I/O errors, changing sources
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_write_error_is_one_line_exit_2_and_leaves_the_old_output(tiny_siblings, tmp_path, monkeypatch, capsys, code):
    import tsugiki.merging.writer as writer_mod

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_siblings.base}\n    parameters: {{weight: 1}}\n"
                      f"  - model: {tiny_siblings.variants[0]}\n    parameters: {{weight: 1}}\n")
    out = tmp_path / "out"
    if not out.exists():
        assert main(["merge", str(recipe), "-o", str(out), "-q"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    calls = {"n": 0}
    real = writer_mod.ShardedSafetensorsWriter._write

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(code, os.strerror(code))
        return real(self, *a, **k)

    monkeypatch.setattr(writer_mod.ShardedSafetensorsWriter, "_write", failing)
    capsys.readouterr()
    assert main(["merge", str(recipe), "-o", str(out), "-q", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and os.strerror(code) in err[0], err
    assert ("disk full" in err[0]) == (code == errno.ENOSPC)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert _debris(tmp_path) == []
    calls["n"] = 0
    assert main(["merge", str(recipe), "-o", str(tmp_path / "new"), "-q"]) == 2  # a new output: none left either
    assert not (tmp_path / "new").exists() and _debris(tmp_path) == []


def test_source_changing_during_a_merge_is_detected(tiny_siblings, tmp_path, monkeypatch):
    from tsugiki.merging import to_disk
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.recipe import load_recipe

    src = tmp_path / "src"
    shutil.copytree(tiny_siblings.variants[0], src)
    recipe = load_recipe(f"merge_method: linear\nmodels:\n  - model: {tiny_siblings.base}\n    parameters: {{weight: 1}}\n"
                         f"  - model: {src}\n    parameters: {{weight: 1}}\n")
    real = to_disk.iter_merged

    def touching(*a, **k):  # another process rewrites the source while the merge reads it
        for i, item in enumerate(real(*a, **k)):
            if i == 1:
                f = src / "model.safetensors"
                os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
            yield item

    monkeypatch.setattr(to_disk, "iter_merged", touching)
    with pytest.raises(CheckpointError, match="model.safetensors: changed while it was being read"):
        to_disk.merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False))
    assert not (tmp_path / "out").exists() and _debris(tmp_path) == []


def test_output_write_error_names_an_unreadable_source_instead(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match=r"out: not written: /some/source: Input/output error"):
        with AtomicOutputDir(out):
            raise OSError(errno.EIO, os.strerror(errno.EIO), "/some/source")
    assert not out.exists() and _debris(tmp_path) == []


# ------------------------------------------------------------------ code named by a config
CODE = """
from pathlib import Path
Path(__file__).with_name("ran").write_text("imported")

def score(ctx, data=None):
    return -(ctx.params["x"] - 1) ** 2
"""


def _code_config(tmp_path: Path, function: str) -> Path:
    (tmp_path / "fit.py").write_text(CODE)
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text("name: code\nspace: {kind: box, params: {x: [-3, 3]}}\n"
                   f"fitness:\n  function: {function}\nsearch: {{population: 4, generations: 2}}\n")
    return cfg


@pytest.mark.parametrize("function", ["fit.py:score",
                                      "weighted_sum\n  args: {terms: [{function: neg_sphere}, {function: mymod:score}]}"])
def test_config_naming_code_is_refused_without_allow_code(tmp_path, capsys, function):
    cfg = _code_config(tmp_path, function)
    for argv in (["evolve", str(cfg), "-o", str(tmp_path / "run"), "-q"],
                 ["evolve", str(cfg), "--plan"] if ".py" not in function else None):
        if argv is None:
            continue
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if "--plan" in argv:  # a plan never runs user code, and does not need to
            assert code == 0
        else:
            assert code == 2 and len(err) == 1, err
            assert str(cfg) in err[0] and "--allow-code" in err[0] and ("fit.py" in err[0] or "mymod" in err[0])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "run").exists()


def test_plan_never_imports_a_code_fitness_and_allow_code_runs_it(tmp_path, capsys):
    cfg = _code_config(tmp_path, "fit.py:score")
    assert main(["evolve", str(cfg), "--plan"]) == 0
    assert "1 dimensions" in capsys.readouterr().out and not (tmp_path / "ran").exists()
    assert main(["evolve", str(cfg), "-o", str(tmp_path / "run"), "-q", "--allow-code"]) == 0
    assert (tmp_path / "ran").read_text() == "imported"
    (tmp_path / "ran").unlink()
    assert main(["evolve", "--resume", str(tmp_path / "run"), "-q", "--generations", "3"]) == 2  # resume asks again
    assert not (tmp_path / "ran").exists()
    assert main(["evolve", "--resume", str(tmp_path / "run"), "-q", "--generations", "3", "--allow-code"]) == 0


# ------------------------------------------------------------------ evolve killed before its search started
TINY_PS = """name: early
tiny_models: {arch: llama, n: 2, kind: finetuned, seed: 0, steps: 3}
space: {kind: ps, method: linear, models: [variant_0, variant_1], params: {weight: [0.0, 1.0]}}
fitness:
  function: answer_loglik
  data: {generator: arithmetic, split: fitness, n: 4, seed: 0}
search: {seed: 0, population: 2, generations: 1}
"""


def test_run_killed_while_preparing_sources_resumes(tmp_path):
    cfg = tmp_path / "early.yaml"
    cfg.write_text(TINY_PS)
    run = tmp_path / "run"
    _kill_when([sys.executable, "-m", "tsugiki.cli", "evolve", str(cfg), "-o", str(run), "-q"],
               lambda: (run / "models").exists())
    assert (run / "config.yaml").exists() and not (run / "run.json").exists() and not (run / "models" / ".complete").exists()
    assert main(["evolve", "--resume", str(run), "-q"]) == 0
    assert main(["evolve", str(cfg), "-o", str(tmp_path / "ref"), "-q"]) == 0
    assert history_of(run) == history_of(tmp_path / "ref")
    # a config whose run never started may be replaced by another (here: one more candidate)
    other = tmp_path / "other"
    other_cfg = tmp_path / "other.yaml"
    other_cfg.write_text(TINY_PS.replace("population: 2", "population: 3"))
    _kill_when([sys.executable, "-m", "tsugiki.cli", "evolve", str(cfg), "-o", str(other), "-q"],
               lambda: (other / "config.yaml").exists())
    assert main(["evolve", str(other_cfg), "-o", str(other), "-q"]) == 0
    assert len(history_of(other)) == 3


def history_of(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "history.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ two runs, one dir
HOLD = """
import sys, time
from pathlib import Path
from tsugiki.fileio import lock_dir
lock_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _holder(d: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    return proc


@pytest.mark.parametrize("verb", ["evolve", "demo"])
def test_second_run_on_a_dir_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, capsys, verb):
    cfg = _code_config(tmp_path, "neg_sphere")
    run = tmp_path / "run"
    if verb == "demo":
        run.mkdir()
        (run / "demo.json").write_text(json.dumps({"quick": True, "seed": 0, "stages": ["sdxl"]}) + "\n")
    argv = ["evolve", str(cfg), "-o", str(run), "-q"] if verb == "evolve" else \
        ["demo", "--quick", "--stages", "sdxl", "-o", str(run), "--no-progress"]
    holder = _holder(run)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another process (pid {holder.pid})" in err[0], err
        assert sorted(p.name for p in run.iterdir()) == [".lock"] + (["demo.json"] if verb == "demo" else [])
    finally:
        holder.kill()
        holder.wait()
    if verb == "evolve":  # the dead holder's lock is taken over: the run goes on
        assert main(argv) == 0 and (run / "run.json").exists()
        assert (run / ".lock").read_text() == str(os.getpid())
    else:
        from tsugiki.demo.run import DemoError
        from tsugiki.fileio import lock_dir, unlock_dir

        fd = lock_dir(run, error=DemoError)  # what run_demo takes first
        assert (run / ".lock").read_text() == str(os.getpid())
        unlock_dir(fd)


# ------------------------------------------------------------------ generation settings
def test_exported_model_keeps_its_sources_generation_config(tmp_path):
    from transformers import GenerationConfig

    cfg = tmp_path / "early.yaml"
    cfg.write_text(TINY_PS)
    run, export = tmp_path / "run", tmp_path / "best"
    assert main(["evolve", str(cfg), "-o", str(run), "-q", "--export", str(export)]) == 0
    source = run / "models" / "variant_0" / "generation_config.json"  # the PS donor: the first model
    assert (export / "generation_config.json").read_bytes() == source.read_bytes()
    gen = GenerationConfig.from_pretrained(export)
    assert gen.max_new_tokens is None and gen.eos_token_id is not None  # no evaluation limit baked into the model


# ------------------------------------------------------------------ logs
LOAD = """
import sys
from tsugiki.progress import quiet_third_party_bars
if sys.argv[2] == "quiet":
    quiet_third_party_bars()  # what the CLI does first when stderr is not a terminal
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1])
"""


def test_third_party_bars_are_off_in_a_log(tiny_siblings, tmp_path):
    runs = {}
    for mode in ("control", "quiet"):
        log = tmp_path / f"{mode}.log"
        with open(log, "wb") as f:
            subprocess.run([sys.executable, "-c", LOAD, str(tiny_siblings.base), mode], stdout=f, stderr=subprocess.STDOUT, check=True)
        runs[mode] = log.read_bytes().decode()
    assert "\r" in runs["control"] and "Loading weights" in runs["control"]  # the bar the control draws
    assert "\r" not in runs["quiet"] and "Loading weights" not in runs["quiet"]


def test_cli_progress_in_a_log_is_plain_lines(tmp_path):
    cfg = tmp_path / "early.yaml"
    cfg.write_text(TINY_PS.replace("generations: 1", "generations: 2"))
    log = tmp_path / "evolve.log"
    env = dict(os.environ, TSUGIKI_PROGRESS_INTERVAL="0")
    with open(log, "wb") as f:  # not a terminal: what CI logs and `> file` get
        subprocess.run([sys.executable, "-m", "tsugiki.cli", "evolve", str(cfg), "-o", str(tmp_path / "run")],
                       stdout=f, stderr=subprocess.STDOUT, env=env, check=True)
    text = log.read_bytes().decode()  # bytes: read_text would turn "\r" into "\n"
    assert "\r" not in text and "\x1b" not in text, text
    lines = text.splitlines()
    assert [line.split(" [")[0] for line in lines if line.startswith("evolve early:")] == ["evolve early: 1/2 gen", "evolve early: 2/2 gen"]
    assert "it/s]" not in text and "%|" not in text  # no tqdm bar of anyone's


def test_line_progress_prints_at_most_every_interval_and_the_end():
    import io

    from tsugiki.progress import LineProgress

    out = io.StringIO()
    for _ in LineProgress(range(5), desc="merging", unit="tensor", file=out, interval=1e9):
        pass
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == ["merging: 5/5 tensor"]
    out = io.StringIO()
    bar = LineProgress(total=3, desc="evolve", unit="gen", initial=1, file=out, interval=0)
    bar.update(1)
    bar.set_postfix(best="0.5")
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["evolve: 2/3 gen", "evolve: 3/3 gen"]
    assert lines[1].endswith("(best=0.5)")


# ------------------------------------------------------------------ outputs that describe themselves
def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_merged_dir_names_sources_portably_with_their_digests(tiny_siblings, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_siblings.base, project / "models" / "base")
    shutil.copytree(tiny_siblings.variants[0], project / "models" / "ja")
    (project / "recipes").mkdir()
    recipe = project / "recipes" / "ta.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: ../models/base\nmodels:\n"
                      f"  - model: ../models/ja\n    parameters: {{weight: 0.7}}\n"
                      f"  - model: {tiny_siblings.variants[1]}\n    parameters: {{weight: 0.3}}\n")
    out = project / "out" / "ta"
    assert main(["merge", str(recipe), "-o", str(out), "-q"]) == 0
    text = (out / "tsugiki_recipe.yaml").read_text()
    card = (out / "README.md").read_text()
    assert "base_model: ../../models/base" in text and "model: ../../models/ja" in text  # relative to the output
    assert f"model: {tiny_siblings.variants[1]}" in text  # an absolute path stays the user's absolute path
    assert str(project) not in text and str(project) not in card
    for src in (project / "models" / "base", project / "models" / "ja", tiny_siblings.variants[1]):
        digest = _sha256(src / "model.safetensors")
        assert digest in text and digest in card
    assert "`../models/ja` (path; the recipe)" in card  # as the user wrote it
    # the recipe in the dir reproduces the model, also after the project moved as a whole
    moved = tmp_path / "elsewhere"
    shutil.move(str(project), str(moved))
    again = tmp_path / "again"
    assert main(["merge", str(moved / "out" / "ta" / "tsugiki_recipe.yaml"), "-o", str(again), "-q"]) == 0
    assert _same_weights(again, moved / "out" / "ta")


def test_evolved_export_embeds_its_intermediate_recipe_and_reproduces_after_a_move(tmp_path):
    config = (Path(__file__).parents[1] / "configs" / "tiny-ps-dfs.yaml").read_text()
    config = config.replace("steps: 40", "steps: 3").replace("population: 12", "population: 2") \
        .replace("generations: 20", "generations: 1").replace("n: 48", "n: 4")
    project = tmp_path / "project"
    project.mkdir()
    (project / "ps-dfs.yaml").write_text(config)
    run, export = project / "runs" / "ps-dfs", project / "best"
    assert main(["evolve", str(project / "ps-dfs.yaml"), "-o", str(run), "-q", "--export", str(export)]) == 0
    text, card = (export / "tsugiki_recipe.yaml").read_text(), (export / "README.md").read_text()
    assert str(tmp_path) not in text and str(tmp_path) not in card
    assert "../runs/ps-dfs/ps_model" in text and "../runs/ps-dfs/models/variant_1" in text
    ps_recipe = (run / "ps_model" / "tsugiki_recipe.yaml").read_text()
    assert str(tmp_path) not in ps_recipe and "../models/variant_0" in ps_recipe
    assert ps_recipe.rstrip() in card  # the intermediate model's recipe is on the card
    assert _sha256(run / "ps_model" / "model.safetensors") in card
    moved = tmp_path / "moved"
    shutil.move(str(project), str(moved))
    ps_again, again = tmp_path / "ps_again", tmp_path / "again"
    assert main(["merge", str(moved / "runs" / "ps-dfs" / "ps_model" / "tsugiki_recipe.yaml"), "-o", str(ps_again), "-q"]) == 0
    assert _same_weights(ps_again, moved / "runs" / "ps-dfs" / "ps_model")
    assert main(["merge", str(moved / "best" / "tsugiki_recipe.yaml"), "-o", str(again), "-q"]) == 0
    assert _same_weights(again, moved / "best")


def test_unreadable_source_is_named(tiny_siblings, monkeypatch):
    """An I/O error reading a source names the source file and tensor (and is not taken for a write
    error); reads through a memory map cannot be made to fail in-process (the kernel sends SIGBUS)."""
    import tsugiki.merging.checkpoint as ck

    def failing(fd, buffers, offset):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ck.os, "preadv", failing)
    with ck.Checkpoint(tiny_siblings.base) as c:
        name = c.names()[0]
        with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{name}': cannot read \(Input/output error\)"):
            c.read(name)


def test_digests_are_kept_per_file_version(tiny_siblings, tmp_path, monkeypatch):
    """A source's SHA-256 is computed once per file version and kept in $TSUGIKI_CACHE/sha256; a source
    rewritten in place gets its new digest."""
    import tsugiki.merging.provenance as prov

    monkeypatch.setenv("TSUGIKI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prov, "_DIGESTS", {})
    src = tmp_path / "src"
    shutil.copytree(tiny_siblings.variants[0], src)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_siblings.base}\n    parameters: {{weight: 1}}\n"
                      f"  - model: {src}\n    parameters: {{weight: 1}}\n")
    assert main(["merge", str(recipe), "-o", str(tmp_path / "one"), "-q"]) == 0
    first = _sha256(src / "model.safetensors")
    kept = [p.read_text().split()[0] for p in (tmp_path / "cache" / "sha256").iterdir()]
    assert first in kept and _sha256(tiny_siblings.base / "model.safetensors") in kept
    tensors = weights(src)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    from safetensors.torch import save_file

    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(prov, "_DIGESTS", {})
    assert main(["merge", str(recipe), "-o", str(tmp_path / "two"), "-q"]) == 0
    second = _sha256(src / "model.safetensors")
    assert second != first and second in (tmp_path / "two" / "tsugiki_recipe.yaml").read_text()
    assert first not in (tmp_path / "two" / "tsugiki_recipe.yaml").read_text()
