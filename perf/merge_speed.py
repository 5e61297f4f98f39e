"""Merge speed and memory of every merge method on a ~1 GB fp32 model pair, against an I/O-only pass and mergekit.

Not a test: prints a Markdown table. Each merge runs in its own subprocess so its peak RSS is its own.

    python perf/merge_speed.py                                   # tsugiki only, every method
    python perf/merge_speed.py --mergekit /path/to/venv-with-mergekit/bin/python --threads 2

"merge s" is the time `tsugiki merge` reports (without interpreter start-up; "wall" includes it). The
"I/O floor" reads the same inputs (page-cached) and writes the same output bytes into the same directory
with no compute at all: the bound on this disk, measured in the same run, just before each merge.
Issue 14's targets are printed per row: every method ≤ 0.5× mergekit's wall time and ≤ its peak RSS;
linear, task arithmetic, TIES, DARE-TIES and SLERP within 1.25× of the I/O floor; peak RSS < 3 × the
largest tensor + 300 MB. `--out-dir /dev/shm` takes the disk out of the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tsugiki.merging.provenance import SourceDigests
from tsugiki.merging.writer import OutputTensor, ShardedSafetensorsWriter

M = "  - {{model: {%s}%s}}\n"
W = lambda w, extra="": ", parameters: {{weight: %s%s}}" % (w, extra)  # noqa: E731


def _recipe(method: str, models: str, base: bool = True, params: str = "") -> str:
    return (f"merge_method: {method}\n" + ("base_model: {a}\n" if base else "") + "models:\n" + models
            + (f"parameters: {{{{{params}}}}}\n" if params else "") + "dtype: float32\n")


# every method mergekit 0.1.5 registers, on the pair a (the base where there is one) and b; model_stock
# needs a third model c
PAIR = M % ("a", "") + M % ("b", W(1.0))
SPARSE = M % ("a", "") + M % ("b", W(1.0, ", density: 0.5"))
METHODS = {
    "linear": _recipe("linear", M % ("a", W(0.4)) + M % ("b", W(0.6)), base=False),
    "task_arithmetic": _recipe("task_arithmetic", PAIR),
    "ties": _recipe("ties", SPARSE),
    "dare_ties": _recipe("dare_ties", SPARSE),
    "dare_linear": _recipe("dare_linear", SPARSE),
    "breadcrumbs": _recipe("breadcrumbs", SPARSE),
    "breadcrumbs_ties": _recipe("breadcrumbs_ties", SPARSE),
    "della": _recipe("della", SPARSE),
    "della_linear": _recipe("della_linear", SPARSE),
    "slerp": _recipe("slerp", M % ("a", "") + M % ("b", ""), params="t: 0.4"),
    "model_stock": _recipe("model_stock", M % ("a", "") + M % ("b", "") + M % ("c", "")),
    "passthrough": _recipe("passthrough", M % ("b", ""), base=False),
    "nearswap": _recipe("nearswap", M % ("a", "") + M % ("b", ""), params="t: 0.001"),
    "karcher": _recipe("karcher", M % ("a", "") + M % ("b", ""), base=False),
    "sce": _recipe("sce", M % ("a", "") + M % ("b", ""), params="select_topk: 0.5"),
    "nuslerp": _recipe("nuslerp", M % ("a", W(0.4)) + M % ("b", W(0.6)), base=False),
    "multislerp": _recipe("multislerp", M % ("a", W(0.4)) + M % ("b", W(0.6)), base=False),
    "arcee_fusion": _recipe("arcee_fusion", M % ("a", "") + M % ("b", "")),
    "ram": _recipe("ram", M % ("a", "") + M % ("b", "")),
    "ramplus_tl": _recipe("ramplus_tl", M % ("a", "") + M % ("b", "")),
}
FLOOR_TARGET = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")  # issue 14: within 1.25x of the I/O floor


def make_model(path: Path, seed: int, hidden: int, inter: int, layers: int, vocab: int) -> int:
    """A Llama-shaped fp32 checkpoint written tensor by tensor; returns its byte size."""
    path.mkdir(parents=True)
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}
        for n in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{n}_proj.weight"] = (hidden, hidden)
        shapes |= {p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter)}
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    entries = [OutputTensor(n, torch.float32, s) for n, s in shapes.items()]
    writer = ShardedSafetensorsWriter(path, entries, max_shard_bytes=400 * 1024**2)
    g = torch.Generator().manual_seed(seed)
    for e in entries:
        writer.write(e.name, torch.randn(e.shape, generator=g) * 0.02)
    writer.close()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
              "num_key_value_heads": hidden // 64, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(config))
    return sum(e.nbytes for e in entries)


def warm(path: Path) -> None:
    for f in path.glob("*.safetensors"):
        with open(f, "rb") as fh:
            while fh.read(64 * 1024**2):
                pass


def settle() -> None:
    """Flush dirty pages (and the discards of deleted outputs) so one run's writeback does not land
    in the next run's timing."""
    os.sync()
    time.sleep(1)


def io_floor_seconds(inputs: list[Path], out_dir: Path, out_bytes: int) -> float:
    """Time to read every input file (page-cached) and write `out_bytes` to a new file in `out_dir`:
    the I/O any merge into that directory has to do, with no compute."""
    block = bytearray(64 * 1024**2)
    target = out_dir / "tsugiki-perf-io-floor.bin"
    settle()
    start = time.perf_counter()
    for path in inputs:
        for f in path.glob("*.safetensors"):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(block):
                    pass
    with open(target, "wb", buffering=0) as fh:
        os.posix_fallocate(fh.fileno(), 0, out_bytes)  # as tsugiki's writer does
        written = 0
        while written < out_bytes:
            written += fh.write(block[: min(len(block), out_bytes - written)])
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, stdout) of a subprocess."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        print(stderr[-2000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code, stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of EACH model of the pair (default 1.0)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--mergekit", help="python executable of a venv where mergekit is installed")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS for both tools (default: all cores)")
    ap.add_argument("--workdir", help="where to put the models (default: a temp dir, removed after)")
    ap.add_argument("--out-dir", help="where merged outputs are written (default: the workdir)")
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tsugiki-perf-"))
    hidden, inter, vocab = 2048, 5632, 16000
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 4
    layers = max(1, round((args.size_gb * 1024**3 - 2 * vocab * hidden * 4) / per_layer))
    paths = {n: work / n for n in ("a", "b", "c")}
    for seed, name in enumerate(("a", "b", "c") if "model_stock" in methods else ("a", "b"), start=1):
        if not paths[name].exists():
            make_model(paths[name], seed, hidden, inter, layers, vocab)
    size = sum(f.stat().st_size for f in paths["a"].glob("*.safetensors"))
    largest = vocab * hidden * 4
    rss_bound = 3 * largest / 1024**2 + 300
    print(f"model pair: 2 × {size / 1e9:.2f} GB fp32 ({layers} layers), largest tensor {largest / 1e6:.0f} MB, "
          f"OMP_NUM_THREADS={args.threads}")
    print(f"target peak RSS < 3 × largest + 300 MB = {rss_bound:.0f} MB")
    # the SHA-256 of each source file that merged dirs record is computed once per file version and kept in
    # $TSUGIKI_CACHE/sha256 (tsugiki.merging.provenance); the merges below are timed with it at hand
    started = time.perf_counter()
    SourceDigests({n: sorted(p.glob("*.safetensors")) for n, p in paths.items() if p.exists()}).result()
    print(f"source digests (once per file version, then cached): {time.perf_counter() - started:.1f} s")

    rows = []
    for method in methods:
        recipe = work / f"{method}.yaml"
        recipe.write_text(METHODS[method].format(**paths))
        inputs = [paths[n] for n in ("a", "b", "c") if "{" + n + "}" in METHODS[method]]
        for path in inputs:
            warm(path)
        out = Path(args.out_dir or work) / f"tsugiki-perf-out-{method}"
        shutil.rmtree(out, ignore_errors=True)
        floor_s = min(io_floor_seconds(inputs, out.parent, size) for _ in range(2))
        settle()
        wall, rss, code, stdout = run_measured([sys.executable, "-m", "tsugiki.cli", "merge", str(recipe), "-o", str(out), "-q"], env)
        reported = re.search(r"in ([0-9.]+)s", stdout)
        row = {"method": method, "tsugiki_s": wall, "merge_s": float(reported.group(1)) if reported else wall,
               "tsugiki_rss_mb": rss, "floor_s": floor_s, "ok": code == 0}
        shutil.rmtree(out, ignore_errors=True)
        if args.mergekit:
            for path in inputs:
                warm(path)
            settle()
            mk = [args.mergekit, "-m", "mergekit.scripts.run_yaml", str(recipe), str(out), "--no-copy-tokenizer"]
            row["mergekit_s"], row["mergekit_rss_mb"], mk_code, _ = run_measured(mk, env)
            row["mergekit_ok"] = mk_code == 0
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(f"  {method}: {row['merge_s']:.1f} s" + (f", mergekit {row['mergekit_s']:.1f} s" if args.mergekit else ""), flush=True)

    print(f"output written to {args.out_dir or work}")
    print("\n| method | tsugiki wall s | merge s | peak RSS MB | I/O floor s | merge / floor |"
          + (" mergekit wall s | mergekit RSS MB | wall ratio | RSS ratio |" if args.mergekit else "") + " targets |")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if args.mergekit else "") + "---|")
    for r in rows:
        ratio = r["merge_s"] / r["floor_s"]
        checks = [f"RSS {'ok' if r['tsugiki_rss_mb'] < rss_bound else 'MISSED'}"]
        if r["method"] in FLOOR_TARGET:
            checks.append(f"≤1.25× floor {'ok' if ratio <= 1.25 else 'MISSED'}")
        line = (f"| {r['method']} | {r['tsugiki_s']:.2f} | {r['merge_s']:.2f} | {r['tsugiki_rss_mb']:.0f} | {r['floor_s']:.2f}"
                f" | {ratio:.2f} |")
        if not r["ok"]:
            checks.append("tsugiki FAILED")
        if args.mergekit:
            if r["mergekit_ok"]:
                wr, rr = r["tsugiki_s"] / r["mergekit_s"], r["tsugiki_rss_mb"] / r["mergekit_rss_mb"]
                line += f" {r['mergekit_s']:.2f} | {r['mergekit_rss_mb']:.0f} | {wr:.2f} | {rr:.2f} |"
                checks += [f"≤0.5× mergekit {'ok' if wr <= 0.5 else 'MISSED'}", f"RSS ≤ mergekit {'ok' if rr <= 1 else 'MISSED'}"]
            else:
                line += " FAILED | | | |"
        print(line + " " + ", ".join(checks) + " |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
