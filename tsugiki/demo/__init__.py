"""`tsugiki demo`: the seed paper's three experiments at tiny scale, offline, with an honest report."""

from tsugiki.demo_interim import run_demo  # replaced by the staged demo as it lands

__all__ = ["run_demo"]
