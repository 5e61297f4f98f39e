"""Merge speed and memory on a ~1 GB fp32 model pair, against memcpy (and mergekit if available).

Not a test: prints a table. Each merge runs in its own subprocess so its peak RSS is its own.

    python perf/merge_speed.py                       # tsugiki only
    python perf/merge_speed.py --mergekit /path/to/venv-with-mergekit/bin/python

Throughput is reported as memcpy-equivalent: the time one memcpy of all bytes the merge reads takes
(measured in this run, same machine, page-cached input) divided by the merge's own time (the time
`tsugiki merge` reports, without interpreter start-up; wall time with start-up is printed too).
Where the output goes matters on this kind of machine: writing new file pages on ext4 costs several
times a memcpy, so `--out-dir /dev/shm` measures the engine with a tmpfs output, and the "I/O floor"
column times reading the same inputs and writing the same output bytes with no compute at all.
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

from tsugiki.merging.writer import OutputTensor, ShardedSafetensorsWriter

METHODS = {
    "linear": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.4}}}}\n  - {{model: {b}, parameters: {{weight: 0.6}}}}\ndtype: float32\n",
    "ties": "merge_method: ties\nbase_model: {a}\nmodels:\n  - {{model: {b}, parameters: {{weight: 1.0, density: 0.5}}}}\ndtype: float32\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: {a}\nmodels:\n  - {{model: {b}, parameters: {{weight: 1.0, density: 0.5}}}}\ndtype: float32\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nmodels:\n  - {{model: {a}}}\n  - {{model: {b}}}\nparameters: {{t: 0.4}}\ndtype: float32\n",
}


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


def memcpy_seconds(nbytes: int) -> float:
    """Time to memcpy `nbytes` (best of 3, in 128 MB blocks)."""
    block = 128 * 1024**2
    src = torch.ones(block // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        done = 0
        while done < nbytes:
            dst.copy_(src)
            done += block
        best = min(best, time.perf_counter() - start)
    return best * nbytes / done


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


def run_measured(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, stdout) of a subprocess."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
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
    ap.add_argument("--workdir", help="where to put the models (default: a temp dir, removed after)")
    ap.add_argument("--out-dir", help="where merged outputs are written (default: the workdir)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tsugiki-perf-"))
    hidden, inter, vocab = 2048, 5632, 16000
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 4
    layers = max(1, round((args.size_gb * 1024**3 - 2 * vocab * hidden * 4) / per_layer))
    a, b = work / "a", work / "b"
    if not a.exists():
        make_model(a, 1, hidden, inter, layers, vocab)
        make_model(b, 2, hidden, inter, layers, vocab)
    size = sum(f.stat().st_size for f in a.glob("*.safetensors"))
    largest = vocab * hidden * 4
    print(f"model pair: 2 × {size / 1e9:.2f} GB fp32 ({layers} layers), largest tensor {largest / 1e6:.0f} MB")
    print(f"target peak RSS < 3 × largest + 300 MB = {(3 * largest) / 1024**2 + 300:.0f} MB")

    rows = []
    for method in args.methods.split(","):
        recipe = work / f"{method}.yaml"
        recipe.write_text(METHODS[method].format(a=a, b=b))
        warm(a), warm(b)
        bytes_read = 2 * size
        copy_s = memcpy_seconds(bytes_read)
        out = Path(args.out_dir or work) / f"tsugiki-perf-out-{method}"
        shutil.rmtree(out, ignore_errors=True)
        floor_s = min(io_floor_seconds([a, b], out.parent, size) for _ in range(2))
        settle()
        wall, rss, code, stdout = run_measured([sys.executable, "-m", "tsugiki.cli", "merge", str(recipe), "-o", str(out), "-q"])
        reported = re.search(r"in ([0-9.]+)s", stdout)
        merge_s = float(reported.group(1)) if reported else wall
        row = {"method": method, "tsugiki_s": wall, "merge_s": merge_s, "tsugiki_rss_mb": rss, "memcpy_s": copy_s,
               "floor_s": floor_s, "ok": code == 0}
        shutil.rmtree(out, ignore_errors=True)
        if args.mergekit:
            warm(a), warm(b)
            settle()
            mk = [args.mergekit, "-m", "mergekit.scripts.run_yaml", str(recipe), str(out), "--no-copy-tokenizer"]
            row["mergekit_s"], row["mergekit_rss_mb"], mk_code, _ = run_measured(mk)
            row["mergekit_ok"] = mk_code == 0
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)

    print(f"output written to {args.out_dir or work}")
    print(f"\n{'method':<10} {'wall s':>7} {'merge s':>8} {'peak RSS MB':>12} {'memcpy s':>9} {'× memcpy bw':>12}"
          f" {'I/O floor s':>12} {'× I/O floor':>12}", end="")
    print(f" {'mergekit s':>11} {'wall ratio':>11} {'RSS ratio':>10}" if args.mergekit else "")
    for r in rows:
        line = (f"{r['method']:<10} {r['tsugiki_s']:7.2f} {r['merge_s']:8.2f} {r['tsugiki_rss_mb']:12.0f} {r['memcpy_s']:9.3f}"
                f" {r['memcpy_s'] / r['merge_s']:12.1%} {r['floor_s']:12.2f} {r['floor_s'] / r['merge_s']:12.1%}")
        if not r["ok"]:
            line += "  (tsugiki FAILED)"
        if args.mergekit:
            if r["mergekit_ok"]:
                line += f" {r['mergekit_s']:11.2f} {r['tsugiki_s'] / r['mergekit_s']:11.2f} {r['tsugiki_rss_mb'] / r['mergekit_rss_mb']:10.2f}"
            else:
                line += "  (mergekit FAILED)"
        print(line)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
