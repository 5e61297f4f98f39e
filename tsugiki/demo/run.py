"""`tsugiki demo`: run the three stages (LM, VLM, SDXL) into RUN_DIR and write the report.

RUN_DIR is reusable: finished parts (siblings, search runs, exported models) are kept, so an
interrupted demo continues where it stopped when rerun with the same settings. ``--force`` starts over.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from tsugiki.errors import TsugikiError
from tsugiki.fileio import lock_dir, unlock_dir

STAGES = ("lm", "vlm", "sdxl")


class DemoError(TsugikiError):
    pass


def _claim(run_dir: Path, settings: dict, force: bool) -> None:
    """Create RUN_DIR, or reuse it when it holds a demo run with the same settings."""
    marker = run_dir / "demo.json"
    held = [p for p in run_dir.iterdir() if p.name != ".lock"] if run_dir.is_dir() else []
    if held and force:
        if not marker.exists():
            raise DemoError(f"{run_dir}: exists and is not a tsugiki demo run dir; refusing to delete it with --force")
        for p in held:  # everything but the lock this process holds
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        held = []
    if held:
        if not marker.exists():
            raise DemoError(f"{run_dir}: exists and is not a tsugiki demo run dir; choose another -o")
        old = json.loads(marker.read_text())
        if old != settings:
            raise DemoError(f"{run_dir}: holds a demo run with other settings ({old}); rerun with --force to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings) + "\n")


def run_demo(run_dir: Path, *, quick: bool = False, seed: int = 0, force: bool = False,
             stages: tuple[str, ...] = STAGES, rebuild_models: bool = False, mgsm_ja: bool = False,
             progress: bool = True, engine: str = "hf", dfs: bool = False) -> dict:
    """Run the demo (``mgsm_ja``: the LM stage also scores its sources and best evolved models on the real
    MGSM-JA; not part of the run dir's settings, so it can be added to a finished run; ``dfs``: the LM stage
    also runs the DFS and PS+DFS searches); returns ``{"results": path, "report": path, "leaderboard": path, "failed": [stage...]}``."""
    run_dir = Path(run_dir).resolve()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise DemoError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if run_dir.exists() and not run_dir.is_dir():
        raise DemoError(f"{run_dir}: exists and is not a directory; choose another -o")
    if run_dir.is_dir() and not (run_dir / "demo.json").exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
        what = "refusing to delete it with --force" if force else "choose another -o"
        raise DemoError(f"{run_dir}: exists and is not a tsugiki demo run dir; {what}")  # before a lock file is put in it
    lock = lock_dir(run_dir, error=DemoError, what="demo run dir")  # a second demo on it is refused at once
    try:
        return _run(run_dir, quick=quick, seed=seed, force=force, stages=stages, rebuild_models=rebuild_models,
                    mgsm_ja=mgsm_ja, progress=progress, engine=engine, dfs=dfs)
    finally:
        unlock_dir(lock)


def _run(run_dir: Path, *, quick: bool, seed: int, force: bool, stages: tuple[str, ...], rebuild_models: bool,
         mgsm_ja: bool, progress: bool, engine: str, dfs: bool = False) -> dict:
    from tsugiki.demo.report import terminal_leaderboard, write_leaderboard, write_report, write_results
    from tsugiki.demo.stage import StageContext

    # the engine changes results (vLLM's default dtype is bfloat16): a run dir holds one engine's; hf is left out
    # of the settings so that run dirs made before the engines continue
    _claim(run_dir, {"quick": quick, "seed": seed, "stages": list(stages), **({} if engine == "hf" else {"engine": engine}),
                     **({"dfs": True} if dfs else {})}, force)
    t0 = time.perf_counter()
    adapters = llava = None
    if rebuild_models:
        adapters, llava = rebuild_models_into(run_dir / "rebuilt", progress=progress)

    results, failed = [], []
    for stage in stages:
        ctx = StageContext(run_dir, run_dir / stage, quick=quick, seed=seed, progress=progress, engine=engine)
        ctx.out.mkdir(parents=True, exist_ok=True)
        try:
            if stage == "lm":
                from tsugiki.demo.lm.stage import run_lm_stage, search_seeds

                result, _ = run_lm_stage(ctx, adapters=adapters, seeds=search_seeds(seed, quick), mgsm_ja=mgsm_ja,
                                               dfs=dfs)
            elif stage == "vlm":
                from tsugiki.demo.lm.stage import prepare_sources
                from tsugiki.demo.vlm.stage import run_vlm_stage, search_seeds

                # the JA sibling the LM stage materialised (or materialises now, in the same place)
                lm_ctx = StageContext(run_dir, run_dir / "lm", quick=quick, seed=seed, progress=progress, engine=engine)
                sources = prepare_sources(lm_ctx, adapters=adapters, names=("ja",))
                result = run_vlm_stage(ctx, base=Path(sources["base"]), ja=Path(sources["ja"]), weights=llava,
                                       seeds=search_seeds(seed, quick))
            else:
                from tsugiki.demo.sdxl.stage import run_sdxl_stage

                result = run_sdxl_stage(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken stage must not hide the others' results
            failed.append(stage)
            (ctx.out / "error.txt").write_text(traceback.format_exc())
            print(f"[{stage}] FAILED: {type(e).__name__}: {e} (traceback in {ctx.out / 'error.txt'})", flush=True)
            continue
        results.append(result)
        print(f"[{stage}] done in {result.seconds:.0f} s: {result.verdict}", flush=True)

    meta = {"seed": seed, "quick": quick, "engine": engine, "seconds": round(time.perf_counter() - t0, 1),
            "stages": list(stages), "failed": failed}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    paths = {"results": write_results(run_dir, results, meta, created=created),
             "leaderboard": write_leaderboard(run_dir, results),
             "report": write_report(run_dir, results, meta, created=created)}
    print()
    print(terminal_leaderboard(results))
    print(f"\nreport: {paths['report']}\nresults: {paths['results']}\nleaderboard: {paths['leaderboard']}")
    print(f"total {meta['seconds']:.0f} s")
    return {**paths, "failed": failed}


def rebuild_models_into(out: Path, *, progress: bool = True) -> tuple[Path, Path]:
    """Train the shipped adapters (JA, MATH) and the LLaVA's weights (vision side and LM LoRA) again into ``out``
    and say whether each is bit-for-bit the shipped file. Returns (adapters dir, LLaVA weights dir) for the run
    to use."""
    from tsugiki.demo.base_model import real_base
    from tsugiki.demo.lm.siblings import RECIPES, SHIPPED_ADAPTERS, train_adapter
    from tsugiki.demo.vlm.models import ADAPTER, SHIPPED_LLAVA, train_llava

    base = real_base(progress=progress)
    for name, recipe in RECIPES.items():
        target = out / "adapters" / name
        if not (target / "adapter_model.safetensors").exists():
            print(f"[models] training the {name} sibling's LoRA adapter ({recipe.steps} steps; minutes) …", flush=True)
            train_adapter(base, recipe, target, progress=progress)
        _say_same(target / "adapter_model.safetensors", SHIPPED_ADAPTERS / name / "adapter_model.safetensors")
    llava = out / "llava"
    if not (llava / "model.safetensors").exists():
        print("[models] training the LLaVA's vision tower, projector and LM LoRA (minutes) …", flush=True)
        train_llava(base, llava, progress=progress)
    _say_same(llava / "model.safetensors", SHIPPED_LLAVA / "model.safetensors")
    _say_same(llava / ADAPTER / "adapter_model.safetensors", SHIPPED_LLAVA / ADAPTER / "adapter_model.safetensors")
    return out / "adapters", llava


def _say_same(new: Path, shipped: Path) -> None:
    from tsugiki.merging.gguf import sha256_of

    same = shipped.exists() and sha256_of(new) == sha256_of(shipped)
    print(f"[models] rebuilt {new} — {'bit-for-bit identical to' if same else 'DIFFERENT from'} the shipped "
          f"file ({shipped})", flush=True)
