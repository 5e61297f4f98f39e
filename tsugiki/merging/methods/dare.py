"""DARE (Drop And REscale): Yu et al. 2023, "Language Models are Super Mario: Absorbing Abilities
from Homologous Models as a Free Lunch", arXiv:2311.03099.

Each task-vector entry is kept with probability ``density`` (Bernoulli, from the merge's seeded
generator); with ``rescale`` (default on) the kept entries are scaled so the task vector keeps its
L1 norm (mergekit 0.1.5's rescale, approximately the paper's 1/density). ``dare_ties`` adds the
TIES sign consensus, ``dare_linear`` sums. Both default to normalize=False.
"""

from tsugiki.merging.methods.task_arithmetic import make_task_arithmetic_method

_REF = "Yu et al. 2023, Language Models are Super Mario (DARE), arXiv:2311.03099"

DARE_TIES = make_task_arithmetic_method(
    "dare_ties", sparsification="random", consensus=True, normalize=False, rescale=True, reference=_REF
)
DARE_LINEAR = make_task_arithmetic_method(
    "dare_linear", sparsification="random", consensus=False, normalize=False, rescale=True, reference=_REF
)
