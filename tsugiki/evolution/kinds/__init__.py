"""The kinds of search space (``space.kind``), one module each; importing this package registers every
module's kind in :data:`tsugiki.evolution.space_kind.SPACE_KINDS` (:mod:`tsugiki.evolution` imports
it). A new kind is a new module here: a :class:`~tsugiki.evolution.space_kind.SpaceKind` subclass
decorated with ``@space_kind("NAME")``, with its Problem."""

import tsugiki.evolution.kinds.box  # noqa: F401
import tsugiki.evolution.kinds.dfs.kind  # noqa: F401
import tsugiki.evolution.kinds.ps.kind  # noqa: F401
import tsugiki.evolution.kinds.sdxl.kind  # noqa: F401
