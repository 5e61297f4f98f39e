"""TIES-Merging: Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
arXiv:2306.01708.

Trim (keep the top-``density`` magnitudes of each task vector), elect a sign per entry from the
sum of the weighted task vectors, and average only the entries that agree with it
(normalize=True by default). See ``task_arithmetic`` for the shared formula.
"""

from tsugiki.merging.methods.task_arithmetic import make_task_arithmetic_method

TIES = make_task_arithmetic_method(
    "ties",
    sparsification="magnitude",
    consensus=True,
    normalize=True,
    rescale=False,
    reference="Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",
)
