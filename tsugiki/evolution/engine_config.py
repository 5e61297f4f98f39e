"""The evolve config's ``engine:`` section (:class:`EngineSection`): which evaluation engine
(:mod:`tsugiki.engines`) scores the candidates' text, and its settings. A config without it scores with
``hf``, as before the section existed, and keeps its fingerprint."""

from __future__ import annotations

from typing import Annotated, Optional

from tsugiki.engines import EngineOptions, engine_names
from tsugiki.evolution.schema import Count, Number, Section, one_of


class EngineSection(Section):
    """``engine:``: what scores the candidates' text (:mod:`tsugiki.engines`). ``name``: ``hf`` (transformers
    around the loaded model; what a config without ``engine:`` uses) or ``vllm`` (vLLM resident, each
    candidate's weights swapped in from memory; a PS space over language models). ``dtype`` (vllm; default
    vLLM's ``auto``: bfloat16 for float32 checkpoints), ``max_model_len``, ``gpu_memory_utilization``,
    ``tensor_parallel_size`` and ``kv_cache_gib`` (the KV cache on CPU) are vLLM's settings."""

    name: Annotated[str, one_of(*engine_names())] = "hf"
    dtype: Optional[Annotated[str, one_of("auto", "float32", "bfloat16", "float16")]] = None
    max_model_len: Optional[Count] = None
    gpu_memory_utilization: Optional[Number] = None
    tensor_parallel_size: Optional[Count] = None
    kv_cache_gib: Optional[Count] = None

    def options(self, seed: int = 0) -> EngineOptions:
        dtype = None if self.dtype == "auto" else self.dtype
        return EngineOptions(dtype=dtype, max_model_len=self.max_model_len, seed=seed,
                             gpu_memory_utilization=self.gpu_memory_utilization,
                             tensor_parallel_size=self.tensor_parallel_size, kv_cache_gib=self.kv_cache_gib)
