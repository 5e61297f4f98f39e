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

STAGES = ("lm", "vlm", "sdxl")


class DemoError(TsugikiError):
    pass


def _claim(run_dir: Path, settings: dict, force: bool) -> None:
    """Create RUN_DIR, or reuse it when it holds a demo run with the same settings."""
    marker = run_dir / "demo.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise DemoError(f"{run_dir}: exists and is not a directory; choose another -o")
    if run_dir.exists() and force:
        if not marker.exists() and any(run_dir.iterdir()):
            raise DemoError(f"{run_dir}: exists and is not a tsugiki demo run dir; refusing to delete it with --force")
        shutil.rmtree(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not marker.exists():
            raise DemoError(f"{run_dir}: exists and is not a tsugiki demo run dir; choose another -o")
        old = json.loads(marker.read_text())
        if old != settings:
            raise DemoError(f"{run_dir}: holds a demo run with other settings ({old}); rerun with --force to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings) + "\n")


def run_demo(run_dir: Path, *, quick: bool = False, seed: int = 0, force: bool = False,
             stages: tuple[str, ...] = STAGES, rebuild_models: bool = False, progress: bool = True) -> dict:
    """Run the demo; returns ``{"results": path, "report": path, "leaderboard": path, "failed": [stage...]}``."""
    from tsugiki.demo.report import terminal_leaderboard, write_leaderboard, write_report, write_results
    from tsugiki.demo.stage import StageContext

    run_dir = Path(run_dir).resolve()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise DemoError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    _claim(run_dir, {"quick": quick, "seed": seed, "stages": list(stages)}, force)
    t0 = time.perf_counter()
    base = None
    if rebuild_models:
        base = rebuild_base(run_dir / "rebuilt" / "base", progress=progress)

    results, failed, evolved = [], [], {}
    for stage in stages:
        ctx = StageContext(run_dir, run_dir / stage, quick=quick, seed=seed, progress=progress)
        ctx.out.mkdir(parents=True, exist_ok=True)
        try:
            if stage == "lm":
                from tsugiki.demo.lm_stage import run_lm_stage, search_seeds

                result, evolved = run_lm_stage(ctx, base=base, seeds=search_seeds(seed, quick))
            elif stage == "vlm":
                from tsugiki.demo.lm_stage import vlm_grafts
                from tsugiki.demo.vlm_stage import run_vlm_stage

                llava_lm, grafts = vlm_grafts(run_dir / "lm", evolved, base)
                result = run_vlm_stage(ctx, llava_lm=llava_lm, grafts=grafts)
            else:
                from tsugiki.demo.sdxl_stage import run_sdxl_stage

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

    meta = {"seed": seed, "quick": quick, "seconds": round(time.perf_counter() - t0, 1),
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


def rebuild_base(out: Path, *, progress: bool = True) -> Path:
    """Train the shipped base again and say whether it is bit-for-bit the shipped file."""
    from tsugiki.demo.lm_models import SHIPPED_BASE, file_digest, train_base

    if not (out / "model.safetensors").exists():
        print("[models] training the base LM from scratch (about 10 minutes on 2 idle CPU cores) …", flush=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        train_base(tmp, progress=progress)
        tmp.rename(out)
    new, shipped = out / "model.safetensors", SHIPPED_BASE / "model.safetensors"
    same = shipped.exists() and file_digest(new) == file_digest(shipped)
    print(f"[models] rebuilt base: {new} — {'bit-for-bit identical to' if same else 'DIFFERENT from'} the shipped "
          f"weights ({shipped})", flush=True)
    return out
