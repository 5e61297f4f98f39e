"""Speed of FID's Fréchet step on 2048-d Inception-sized statistics: tsugiki against scipy's `sqrtm`
(pytorch-fid's and clean-fid's formula) and torchmetrics' eigenvalue formula, in the same run.

Not a test: prints a table. All three get the same float64 means and covariances (computed once), so
only the distance is timed; each is run `--repeat` times and the best time is reported (a shared
machine's noise only ever adds time). Values must agree to 1e-6 relative.

    python perf/fid_speed.py                       # N=5000 vs 5000 features, 2048-d
    python perf/fid_speed.py --n 1000 --threads 1  # rank-deficient-ish, single thread
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tsugiki.benchmarks.fid import feature_stats, frechet_distance


def scipy_fid(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # pytorch-fid's fallback for singular products
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def torchmetrics_fid(mu1, s1, mu2, s2) -> float:
    from torchmetrics.image.fid import _compute_fid

    t = lambda x: torch.from_numpy(x)  # noqa: E731
    return float(_compute_fid(t(mu1), t(s1), t(mu2), t(s2)))


def best_time(fn, repeat: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="features per set")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (scipy/numpy use their BLAS's own setting)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    a = rng.normal(size=(args.n, args.dim)) @ mix
    b = rng.normal(size=(args.n, args.dim)) @ (mix + 0.01 * rng.normal(size=mix.shape)) + 0.05
    sa, sb = feature_stats(a), feature_stats(b)
    stats = (sa.mu, sa.sigma, sb.mu, sb.sigma)
    rows = [("tsugiki (chol+eigvalsh)", lambda: frechet_distance(*stats))]
    try:
        import scipy  # noqa: F401

        rows.append(("scipy sqrtm", lambda: scipy_fid(*stats)))
    except ImportError:
        print("scipy not installed: skipped")
    try:
        import torchmetrics  # noqa: F401

        rows.append(("torchmetrics eigvals", lambda: torchmetrics_fid(*stats)))
    except ImportError:
        print("torchmetrics not installed: skipped")
    print(f"Fréchet distance, {args.n} vs {args.n} features, {args.dim}-d, best of {args.repeat}, "
          f"torch threads {torch.get_num_threads()}")
    results = [(name, *best_time(fn, args.repeat)) for name, fn in rows]
    ours_t, ours_v = results[0][1], results[0][2]
    print(f"{'method':<22} {'seconds':>9} {'vs tsugiki':>11} {'FID':>16} {'rel. diff':>10}")
    for name, t, v in results:
        print(f"{name:<22} {t:9.3f} {t / ours_t:10.2f}x {v:16.9f} {abs(v - ours_v) / abs(ours_v):10.1e}")


if __name__ == "__main__":
    main()
