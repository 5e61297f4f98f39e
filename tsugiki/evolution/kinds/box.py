"""``space.kind: box``: named bounded numbers scored by a function of the parameters alone (for
testing the optimiser and for fitness functions that build their own models)."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationInfo

from tsugiki.evolution.problems import Problem
from tsugiki.evolution.schema import Bounds, at
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.evolution.space_kind import KindPlan, SpaceKind


class BoxKind(SpaceKind):
    """Keys: ``params`` ({NAME: [low, high] or {bounds, init, transform}}, at least one)."""

    kind: str = "box"
    params: dict[str, Bounds] = {}

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        if not d.get("params"):
            raise at("params", "a box space needs at least one parameter")
        return d

    def build(self) -> SearchSpace:
        return SearchSpace.of(Param(n, *p.bounds, p.init, p.transform or self.transform) for n, p in self.params.items())

    def problem(self, config: Any, paths: Mapping[str, str]) -> "BoxProblem":
        return BoxProblem(config, paths)

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        space = self.build()
        return KindPlan(space, (("box parameters", space.dim),))


class BoxProblem(Problem):
    kind = "box"

    def __init__(self, config: Any, paths: Mapping[str, str]):
        super().__init__(config, paths)
        self.space = config.spec.space.build()
