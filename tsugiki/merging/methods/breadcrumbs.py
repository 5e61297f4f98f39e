"""Model Breadcrumbs: Davari & Belilovsky 2023, "Model Breadcrumbs: Scaling Multi-Task Model
Merging with Sparse Masks", arXiv:2312.06795.

Each task vector loses its ``gamma`` largest-magnitude entries (outliers) and its smallest ones so
that ``density`` of the entries remain; ``breadcrumbs_ties`` adds the TIES sign consensus. Defaults:
normalize=False, rescale=False, density=1.0 (which disables pruning, outliers included), gamma=0.01.
"""

from tsugiki.merging.methods.task_arithmetic import make_task_arithmetic_method

_REF = "Davari & Belilovsky 2023, Model Breadcrumbs, arXiv:2312.06795"

BREADCRUMBS = make_task_arithmetic_method(
    "breadcrumbs", sparsification="magnitude_outliers", consensus=False, normalize=False, rescale=False, reference=_REF
)
BREADCRUMBS_TIES = make_task_arithmetic_method(
    "breadcrumbs_ties", sparsification="magnitude_outliers", consensus=True, normalize=False, rescale=False, reference=_REF
)
