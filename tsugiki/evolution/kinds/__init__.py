"""The kinds of search space (``space.kind``), listed in one place: :data:`KINDS` below, which this
package registers in :data:`tsugiki.evolution.space_kind.SPACE_KINDS` (:mod:`tsugiki.evolution` imports
it before any config is read). Importing a kind's own module registers nothing.

Each kind has one home here: ``box.py``, or a package ``NAME/`` for a kind with more than a file's worth
(``ps/``, ``dfs/`` with ``ps_dfs``, ``sdxl/`` with ``sdxl_blocks``): ``space.py`` (the search space and its
recipes), ``kind.py`` (the config section with its plan, and the Problem), ``plots.py`` (its plots in
``RUN_DIR/plots``). Adding a kind: write its :class:`~tsugiki.evolution.space_kind.SpaceKind` subclass
(``kind: str = "NAME"``) and Problem in ``kinds/NAME.py`` or ``kinds/NAME/``, and add the class to
:data:`KINDS`. A fitness function of its own goes into :mod:`tsugiki.evolution.fitness`'s list of
built-ins."""

from tsugiki.evolution.kinds.box import BoxKind
from tsugiki.evolution.kinds.dfs.kind import DFSKind, PSDFSKind
from tsugiki.evolution.kinds.ps.kind import PSKind
from tsugiki.evolution.kinds.sdxl.kind import SDXLBlocksKind
from tsugiki.evolution.space_kind import SPACE_KINDS, SpaceKind

#: every built-in kind; each is registered under its ``kind`` field's default, the name configs give
KINDS: tuple[type[SpaceKind], ...] = (BoxKind, PSKind, DFSKind, PSDFSKind, SDXLBlocksKind)

for _kind in KINDS:
    SPACE_KINDS.register(_kind.model_fields["kind"].default, _kind)
