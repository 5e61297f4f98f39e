"""Evolution hot paths: in-memory PS re-merge time vs one memcpy of the weights, and the memory a DFS
candidate adds on top of its loaded sources.

Not a test: prints a table. Targets (issues 8 and 14): a re-merge <= 3x one memcpy of the model's
weights for linear, task arithmetic and SLERP, <= 8x for the TIES/DARE/DELLA family, the first
candidate <= 3x a later one; DFS candidate assembly adds < 5% RSS over the loaded source models.

    python perf/evolution_speed.py                       # ~100 MB fp32 Llama, 2 variants
    python perf/evolution_speed.py --hidden 1024 --layers 12

Models are random Llama checkpoints built in memory (no disk): a base and variants = base + small
deltas. "memcpy" is the best of 15 ``copy_`` of every parameter of the model (its bytes once, the
output of a merge); the merge itself reads base + variants, so the table also gives the ratio to a
memcpy of everything it reads. "first" is the first candidate of a method, which fills the merger's
cache (task vectors, random uniforms: see tsugiki.merging.inmemory); "warm-up" the slowest of the
candidates after it while the cache still grows (TIES's magnitude ranks are built a share per
candidate); the re-merge is the best of 5 candidates after that. --cache-mb 0 measures the merger
without a cache.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import psutil
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tsugiki.evolution.kinds.dfs.assemble import assemble
from tsugiki.evolution.kinds.dfs.space import DFSPath
from tsugiki.merging.inmemory import DEFAULT_CACHE_BYTES, SORT_SHARE, InMemoryMerger
from tsugiki.merging.recipe import Recipe


def rss() -> int:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss


def build(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=hidden // 128 or 1, vocab_size=8192, max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def remerge(args) -> None:
    model = build(args.hidden, args.layers, 0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    variants = [{k: v + 0.01 * v.std().nan_to_num(0.01) * torch.randn(v.shape, generator=g) for k, v in base.items()}
                for _ in range(args.variants)]
    nbytes = sum(v.numel() * v.element_size() for v in base.values())
    params = list(model.state_dict().values())
    copies = [p.detach().clone() for p in params]

    def memcpy():
        with torch.no_grad():
            for p, c in zip(params, copies):
                p.copy_(c)

    t_copy = best_of(memcpy, n=15)  # the machine may be shared: best case for both sides
    copies.clear()  # free them before the merges
    cache = args.cache_mb << 20 if args.cache_mb is not None else DEFAULT_CACHE_BYTES
    merger = InMemoryMerger(model, {"base": base, **{f"v{i}": v for i, v in enumerate(variants)}}, cache_bytes=cache)
    probe = Recipe.from_dict({"merge_method": "linear", "models": [{"model": "base", "parameters": {"weight": 1.0}}]})
    plan_s = best_of(lambda: merger.plan(probe))
    print(f"model: {nbytes / 1e6:.0f} MB fp32 ({args.layers} layers, hidden {args.hidden}), {args.variants} variants, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one memcpy of the weights: {t_copy * 1e3:.1f} ms ({nbytes / t_copy / 1e9:.2f} GB/s)")
    print(f"in-memory merge overhead: plan {plan_s * 1e3:.1f} ms per candidate (recipe -> per-tensor jobs)")
    print(f"merger cache budget: {cache / 2**20:.0f} MiB\n")
    print(f"{'method':<18}{'first ms':>10}{'warm-up ms':>11}{'re-merge ms':>12}{'x memcpy':>10}{'x memcpy of inputs':>20}"
          f"{'first/re-merge':>16}{'cache MiB':>11}")
    sparse = {"weight": 0.5, "density": 0.5}
    for method, p in (("linear", {"weight": 0.5}), ("task_arithmetic", {"weight": 0.5}), ("slerp", {}), ("ties", sparse),
                      ("dare_linear", sparse), ("dare_ties", sparse), ("della", {**sparse, "epsilon": 0.1})):
        data = {"merge_method": method, "models": [{"model": f"v{i}", "parameters": p} for i in range(args.variants)], "seed": 0}
        if method == "linear":
            data["models"].append({"model": "base", "parameters": p})
        elif method == "slerp":  # two models: the base and one variant
            data = {"merge_method": "slerp", "base_model": "base", "models": [{"model": "base"}, {"model": "v0"}],
                    "parameters": {"t": 0.4}}
        else:
            data["base_model"] = "base"
        recipe = Recipe.from_dict(data)
        first = timed(lambda: merger.apply(recipe))
        # the merger spreads what it builds by sorting over several candidates (SORT_SHARE): the
        # slowest of those until its cache stops growing, then the steady state
        warm, used = 0.0, -1
        for _ in range(4 * SORT_SHARE):
            if merger.cache_used == used:
                break
            used = merger.cache_used
            warm = max(warm, timed(lambda: merger.apply(recipe)))
        t = best_of(lambda: merger.apply(recipe), n=5)
        inputs = nbytes * (args.variants + 1)
        print(f"{method:<18}{first * 1e3:>10.0f}{warm * 1e3:>11.0f}{t * 1e3:>12.1f}{t / t_copy:>10.2f}"
              f"{t / (t_copy * inputs / nbytes):>20.2f}{first / t:>16.1f}{merger.cache_used / 2**20:>11.0f}")


def dfs_overhead(args) -> None:
    before = rss()
    models = {f"m{i}": build(args.hidden, args.layers, i) for i in range(2)}
    loaded = rss()
    nlayers = args.layers
    path = [(f"m{(k // nlayers) % 2}", k % nlayers) for k in range(nlayers * 2 * args.repeats)]  # every slot on
    scales = [1.0] + [0.9] * (len(path) - 1)
    t = time.perf_counter()
    cands = [assemble(models, DFSPath(tuple(path), tuple(scales))) for _ in range(args.candidates)]
    seconds = (time.perf_counter() - t) / args.candidates
    after = rss()
    src = loaded - before
    weights = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
    per = (after - loaded) / args.candidates
    print(f"DFS: 2 sources loaded = {src / 1e6:.0f} MB RSS ({weights / 1e6:.0f} MB of weights); "
          f"path of {len(path)} layers (all T = 2 x {nlayers} x {args.repeats} slots)")
    print(f"assembly {seconds * 1e3:.2f} ms per candidate; RSS added per candidate {per / 1e6:.2f} MB = {100 * per / src:.3f}% "
          f"of the sources (mean over {args.candidates} live candidates)")
    ids = torch.randint(0, 8192, (1, 32))
    with torch.no_grad():
        cands[0](ids)
    del cands


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--cache-mb", type=int, help="in-memory merger cache budget in MiB (default: the merger's)")
    p.add_argument("--skip-dfs", action="store_true", help="measure the re-merge only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_dfs:
        dfs_overhead(args)  # first: RSS deltas are clean only before the allocator holds freed memory
        print()
    remerge(args)


if __name__ == "__main__":
    main()
