"""DELLA-Merging: Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", arXiv:2406.11617.

MagPrune: each task-vector entry is kept with a probability rising linearly with its magnitude rank
in its row, from density-epsilon to density+epsilon (both must lie in (0, 1) when density < 1);
rescale (default on) restores each task vector's L1 norm. ``della`` adds the TIES sign consensus
and normalizes by default; ``della_linear`` sums without normalizing.
"""

from tsugiki.merging.methods.task_arithmetic import make_task_arithmetic_method

_REF = "Deep et al. 2024, DELLA-Merging, arXiv:2406.11617"

DELLA = make_task_arithmetic_method(
    "della", sparsification="della_magprune", consensus=True, normalize=True, rescale=True, reference=_REF
)
DELLA_LINEAR = make_task_arithmetic_method(
    "della_linear", sparsification="della_magprune", consensus=False, normalize=False, rescale=True, reference=_REF
)
