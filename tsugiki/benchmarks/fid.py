"""Fréchet Inception Distance (Heusel et al. 2017, arXiv:1706.08500), lower is better.

    FID = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))

computed in float64. The trace of the matrix square root comes from the eigenvalues of a symmetric
PSD matrix similar to S_a S_b, instead of scipy's general `sqrtm` (a Schur decomposition of the
non-symmetric product): Tr((S_a S_b)^(1/2)) = sum_i sqrt(eig_i(M)) with M = L^T S_b L for the
Cholesky factor S_a = L L^T, or — when S_a is singular and has no Cholesky factor — M = R S_b R with
R = U diag(sqrt(l)) U^T from the eigendecomposition S_a = U diag(l) U^T.
Eigenvalues below 8 sqrt(D) eps (largest eigenvalue) — the rounding level of a symmetric eigensolver —
are set to 0 before the square root: otherwise each zero eigenvalue of a covariance from fewer images
than feature dimensions would add sqrt(noise) ~ 1e-8 x scale, summing to relative errors ~1e-5 (the
tests check both: rank-deficient sets and genuine eigenvalues ~1e3 eps x largest are resolved). No
epsilon offset is added to the covariances and no complex parts arise.

Features are the 2048-d pool3 activations of the FID InceptionV3 (`fid_inception.FIDInceptionV3`)
with the standard `pt_inception-2015-12-05-6726825d.pth` weights, given as a local file
(`--inception-weights`), found in torch's hub cache where pytorch-fid leaves it, or downloaded when the
user asks for it (`download_inception_weights`). Nothing is downloaded implicitly.

Resize conventions (uint8 RGB images of any size → 299x299 network input in [-1, 1]):
- ``clean`` (default; clean-fid, Parmar et al. 2022): each channel resized as a float image by PIL's
  antialiased bicubic filter, then (x - 128) / 128 as TensorFlow's Inception graph does.
- ``legacy`` (pytorch-fid): x / 255, torch bilinear interpolation without antialiasing
  (align_corners=False), then 2x - 1. Its values are close to, not equal to, TF FID's; downscaling
  large images without antialiasing aliases, which is why clean-fid exists.
FIDs computed under different conventions (or weights) are not comparable: reports name the mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from tsugiki.benchmarks.fid_inception import FEATURE_DIM, INPUT_SIZE, FIDInceptionV3
from tsugiki.benchmarks.specs import FID_RESIZE_MODES as RESIZE_MODES
from tsugiki.errors import CheckpointError, TsugikiError

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
HIGHER_IS_BETTER = False


class FIDError(TsugikiError):
    """Features or images that FID cannot be computed from."""


# ---- statistics and distance ------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, unbiased (N - 1) covariance
    n: int


def feature_stats(features: np.ndarray | torch.Tensor, *, label: str = "features") -> GaussianStats:
    x = torch.as_tensor(np.asarray(features)).to(torch.float64)
    if x.ndim != 2:
        raise FIDError(f"{label}: expected an N x D array of features, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise FIDError(f"{label}: empty set (no images/features)")
    if x.shape[0] < 2:
        raise FIDError(f"{label}: FID needs at least 2 images (covariance undefined for {x.shape[0]})")
    if not bool(torch.isfinite(x).all()):
        raise FIDError(f"{label}: features contain NaN/Inf")
    mu = x.mean(0)
    centered = x - mu
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return GaussianStats(mu.numpy(), sigma.numpy(), int(x.shape[0]))


def trace_sqrt_product(sigma_a: np.ndarray | torch.Tensor, sigma_b: np.ndarray | torch.Tensor) -> float:
    """Tr((A B)^(1/2)) for symmetric PSD A, B, from the eigenvalues of a symmetric matrix similar to A B."""
    a = torch.as_tensor(np.asarray(sigma_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(sigma_b), dtype=torch.float64)
    a, b = (a + a.T) / 2, (b + b.T) / 2  # exact symmetry for the symmetric solvers
    factor, info = torch.linalg.cholesky_ex(a)  # A = L L^T; L^T B L is similar to A B
    if int(info) != 0:  # singular A (fewer samples than dimensions): A = R R with R its PSD square root
        vals, vecs = torch.linalg.eigh(a)
        factor = (vecs * _denoise(vals).sqrt()) @ vecs.T
    m = factor.T @ b @ factor
    return float(_denoise(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum())


def _denoise(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues indistinguishable from a symmetric eigensolver's rounding noise → 0."""
    tol = eigenvalues.abs().max() * 8 * eigenvalues.numel() ** 0.5 * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise FIDError(f"statistics of different dimensions: {mu_a.shape} / {sigma_a.shape} vs {mu_b.shape} / {sigma_b.shape}")
    diff = mu_a - mu_b
    value = float(diff @ diff) + float(np.trace(sigma_a)) + float(np.trace(sigma_b)) - 2 * trace_sqrt_product(sigma_a, sigma_b)
    return max(value, 0.0)  # a distance; rounding can leave -1e-12 for identical sets


def fid_from_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    sa, sb = feature_stats(a, label="first set"), feature_stats(b, label="second set")
    if sa.mu.shape != sb.mu.shape:
        raise FIDError(f"feature dimensions differ: {sa.mu.shape[0]} vs {sb.mu.shape[0]}")
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def load_features(path: str | os.PathLike) -> np.ndarray:
    """An N x D feature array from a .npy file (no pickles)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FIDError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise FIDError(f"{path}: not a .npy array ({e})") from None
    if arr.ndim != 2:
        raise FIDError(f"{path}: expected an N x D array, got shape {list(arr.shape)}")
    return arr


# ---- weights ----------------------------------------------------------------------------------
def cached_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) keeps the downloaded FID weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def download_inception_weights() -> Path:
    """Download the FID weights into torch's hub cache (only on the user's explicit request)."""
    target = cached_weights_path()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(target), progress=True)
        except Exception as e:  # offline, proxy, HTTP errors: all reported the same way
            raise CheckpointError(f"could not download the FID Inception weights from {FID_WEIGHTS_URL} "
                                  f"({type(e).__name__}: {e})") from None
    return target


def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise CheckpointError(f"{p}: Inception weights file not found")
        return p
    cached = cached_weights_path()
    if cached.exists():
        return cached
    raise CheckpointError(
        f"no FID Inception weights: pass --inception-weights PATH to {FID_WEIGHTS_NAME} (from {FID_WEIGHTS_URL}), "
        f"or allow a download with --download-inception (looked in {cached})"
    )


def load_inception(path: str | os.PathLike | None = None, *, allow_pickle: bool = False,
                   device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID network with weights loaded by key: every parameter and buffer must be in the file with
    its exact shape, and the file may hold nothing else (BatchNorm's num_batches_tracked is optional)."""
    p = resolve_inception_weights(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(p)
    elif not allow_pickle:
        raise CheckpointError(f"{p}: pickle file refused (it can run code when loaded); pass --allow-pickle "
                              "(loaded with weights_only=True) or convert it to .safetensors")
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p}: cannot load: {e}") from None
    model = FIDInceptionV3()
    check_inception_state(state, model.state_dict(), str(p))
    model.load_state_dict(state, strict=False)
    return model.eval().to(device)


def check_inception_state(state: dict, own: dict, label: str) -> None:
    """Same keys (num_batches_tracked optional) and same shapes as the network, or a CheckpointError."""
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"tensor {missing[0]!r} missing" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise CheckpointError(f"{label}: not the FID InceptionV3 weights ({what}; "
                              f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{label}: tensor {k!r} has shape {list(v.shape)}, expected {list(own[k].shape)}")


# ---- images → features --------------------------------------------------------------------------
def _as_uint8(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise FIDError(f"expected an RGB uint8 image (H x W x 3), got {arr.dtype} {list(arr.shape)}")
    return arr


def preprocess(images: Sequence, mode: str = "clean") -> torch.Tensor:
    """uint8 RGB images (PIL or H x W x 3 arrays) → (N, 3, 299, 299) float32 in [-1, 1]."""
    if mode not in RESIZE_MODES:
        raise FIDError(f"unknown resize mode {mode!r} (use {' or '.join(RESIZE_MODES)})")
    out = []
    for image in images:
        arr = _as_uint8(image)
        if mode == "clean":
            from PIL import Image

            # a float32 2-D array becomes a mode "F" image: no rounding back to uint8 after resizing
            chans = [np.asarray(Image.fromarray(arr[:, :, c].astype(np.float32))
                                .resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC)) for c in range(3)]
            x = (torch.from_numpy(np.stack(chans)) - 128.0) / 128.0
        else:
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]
            x = 2 * x - 1
        out.append(x)
    return torch.stack(out)


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: Iterable, *, mode: str = "clean", batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
    """(N, 2048) float64 pool3 features of the images (any iterable of PIL images or uint8 arrays)."""
    from tsugiki.progress import progress_bar

    device = next(model.parameters()).device
    feats, batch = [], []
    bar = progress_bar(desc="inception features", unit="img", disable=not progress, leave=False)

    def flush() -> None:
        feats.append(model(preprocess(batch, mode).to(device)).double().cpu())
        bar.update(len(batch))
        batch.clear()

    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    if not feats:
        raise FIDError("empty image set: no images to compute features of")
    return torch.cat(feats).numpy().reshape(-1, FEATURE_DIM)
