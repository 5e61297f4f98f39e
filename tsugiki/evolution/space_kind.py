"""What a kind of search space is, and the registry of kinds (``space.kind`` in an evolve config).

A kind is one class (a typed config section, :class:`~tsugiki.evolution.schema.Section`) that owns its
``space:`` keys and their defaults, builds its :class:`~tsugiki.evolution.problems.Problem` from a
validated config, plans itself from the sources' config.json files without weights
(``tsugiki evolve CONFIG --plan``) and draws the best candidate's plots for the run's report. The kinds
live in :mod:`tsugiki.evolution.kinds`, each in one home (``kinds/NAME.py`` or ``kinds/NAME/``), and
are registered in :data:`SPACE_KINDS` in one explicit list there (:data:`tsugiki.evolution.kinds.KINDS`);
adding a kind is adding its module or package there and its class to that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional

from tsugiki.errors import EvolutionError
from tsugiki.evolution.schema import Section, Transform
from tsugiki.registry import Registry


@dataclass(frozen=True)
class KindPlan:
    """A kind's weight-free plan: the space (or anything with ``dim``), its named parts (sizes summing
    to ``dim``) and notes."""

    space: Any
    parts: tuple[tuple[str, int], ...]
    notes: tuple[str, ...] = ()


class SpaceKind(Section):
    """``space:`` of an evolve config. Subclasses add their keys (typed fields with defaults) and
    implement :meth:`problem` and :meth:`plan`. ``config`` arguments are
    :class:`~tsugiki.evolution.config.EvolveConfig` (not imported here: the config imports this)."""

    kind: str
    transform: Transform = "sigmoid"

    #: space keys whose values name sources (checked against the known sources when a problem is built)
    source_keys: ClassVar[tuple[str, ...]] = ()
    #: the PNGs :meth:`plots` may write into ``RUN_DIR/plots``: file name -> its caption in report.html
    plot_captions: ClassVar[Mapping[str, str]] = {}

    def plan_sources(self) -> list[str]:
        """The sources whose config.json a plan reads."""
        return []

    def run_sources(self, run_dir: Path) -> dict[str, str]:
        """Sources the run builds itself in ``run_dir``: name -> path."""
        return {}

    def describe_run_source(self, name: str) -> Optional[tuple[str, str]]:
        """(given, where) of a source from :meth:`run_sources`, for the outputs' recipes and cards."""
        return None

    def prepare(self, config: Any, run_dir: Path, paths: Mapping[str, str]) -> None:
        """Build what :meth:`run_sources` names and is missing (main process only)."""

    def plan_configs(self, config: Any, paths: Mapping[str, str], configs: dict[str, Mapping[str, Any]],
                     read: Optional[Callable[[str], Mapping[str, Any]]] = None) -> tuple[str, ...]:
        """Complete ``configs`` (source name -> config.json data) in place with what a plan needs and the
        caller could not give; ``read`` reads a config.json when the plan may open files. Returns notes."""
        return ()

    def problem(self, config: Any, paths: Mapping[str, str]) -> Any:
        raise NotImplementedError

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        raise NotImplementedError

    def plots(self, details: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Draw the best candidate's plots (``details``: its Problem's ``details``) into ``out_dir``, files
        named in :attr:`plot_captions`; called only when matplotlib is installed."""
        return []

    def check_sources(self, config: Any, paths: Mapping[str, str]) -> None:
        """Every model named under ``space.<key>`` for :attr:`source_keys` is a known source."""
        for key in self.source_keys:
            value = getattr(self, key)
            for name in value if isinstance(value, (list, tuple)) else [value] if value else []:
                if name not in paths:
                    raise EvolutionError(f"{config.where('space.' + key)}unknown source {name!r} (known: {', '.join(paths)})")


#: ``space.kind`` -> its class; filled by :mod:`tsugiki.evolution.kinds` from its list of kinds (imported by
#: :mod:`tsugiki.evolution`, so every kind is registered before any config is read)
SPACE_KINDS: Registry[type[SpaceKind]] = Registry("space kind")
