"""Where an evolution's sources are and how they are made: paths by name, tiny models and the PS+DFS
PS model built on first use into the run dir, how the user named each source (for the outputs'
recipes and cards), and loading models for evaluation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.hf_load import from_pretrained
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.merging.checkpoint import HUB_ID, resolve_model_ref
from tsugiki.merging.provenance import Named
from tsugiki.merging.refs import split_lora_ref
from tsugiki.merging.sources import open_checkpoint
from tsugiki.threads import torch_threads
from tsugiki.tokenizer_cache import load_tokenizer
from tsugiki.vlm.merge import is_vlm_source

PS_MODEL = "ps"


def source_paths(config: EvolveConfig, run_dir: Path) -> dict[str, str]:
    """Short name -> model path: ``sources``, tiny factory models and the ps_dfs merged model."""
    spec = config.spec
    paths = dict(spec.sources)
    root = Path(run_dir).resolve() / "models"
    for tiny, llms in ((spec.tiny_models, root), (spec.tiny_sdxl, root), (spec.tiny_vlm, root / "llms")):
        if tiny is None:
            continue
        if tiny is spec.tiny_vlm:
            paths.setdefault("llava", str(root / spec.tiny_vlm.kind))
        paths.setdefault("base", str(llms / "base"))
        for i in range(tiny.n):
            paths.setdefault(f"variant_{i}", str(llms / f"variant_{i}"))
    for name, path in spec.space.run_sources(Path(run_dir)).items():
        paths.setdefault(name, path)
    return paths


def source_names(config: EvolveConfig, run_dir: Path) -> dict[str, Named]:
    """Each source's path (as the recipes a run builds name it) -> how the user named it, for the
    outputs' recipes and cards (:mod:`tsugiki.merging.provenance`): the config's words for its
    ``sources``; run-dir-relative names for what the run built itself."""
    paths = source_paths(config, Path(run_dir))
    spec = config.spec
    out = {}
    for name, path in paths.items():
        if name in spec.sources:
            n = spec.named_as.get(name) or {"given": path, "where": f"sources.{name}"}
            out[path] = Named(n["given"], n["where"])
        elif (described := spec.space.describe_run_source(name)) is not None:
            out[path] = Named(*described)
        else:
            out[path] = Named(os.path.relpath(path, Path(run_dir).resolve()), "built by the run in its run dir (tiny models)")
    return out


def prepare_sources(config: EvolveConfig, run_dir: Path) -> dict[str, str]:
    """Build what the sources need and is missing (tiny models, the ps_dfs merge); main process only."""
    # the factories import torch, transformers and diffusers (seconds): only when a run builds models
    from tsugiki.factory.lm import build_siblings
    from tsugiki.factory.sdxl import build_tiny_sdxl
    from tsugiki.factory.vlm import build_graft_set

    run_dir = Path(run_dir)
    tiny, sd, vlm = config.spec.tiny_models, config.spec.tiny_sdxl, config.spec.tiny_vlm
    if tiny is not None and not (run_dir / "models" / ".complete").exists():
        shutil.rmtree(run_dir / "models", ignore_errors=True)
        build_siblings(run_dir / "models", n=tiny.n, spec=_text_spec(config), kind=tiny.kind, steps=tiny.steps)
        (run_dir / "models" / ".complete").write_text("")
    if sd is not None and not (run_dir / "models" / ".complete").exists():
        shutil.rmtree(run_dir / "models", ignore_errors=True)
        # one seed for text encoders and VAE; UNets differ
        build_tiny_sdxl(run_dir / "models" / "base", seed=sd.seed, unet_seed=sd.seed)
        for i in range(sd.n):
            build_tiny_sdxl(run_dir / "models" / f"variant_{i}", seed=sd.seed, unet_seed=sd.seed + 1 + i)
        (run_dir / "models" / ".complete").write_text("")
    if vlm is not None and not (run_dir / "models" / ".complete").exists():
        shutil.rmtree(run_dir / "models", ignore_errors=True)
        build_graft_set(run_dir / "models", _text_spec(config), n=vlm.n, lm_delta=vlm.lm_delta)
        (run_dir / "models" / ".complete").write_text("")
    paths = source_paths(config, run_dir)
    config.spec.space.prepare(config, run_dir, paths)  # what the space kind builds itself (ps_dfs: the PS model)
    return paths


def _text_spec(config: EvolveConfig):
    """The TinyLMSpec of the LMs ``tiny_models`` or ``tiny_vlm`` builds (mistral for a VLM's)."""
    from tsugiki.factory.lm import TinyLMSpec

    tiny = config.spec.tiny_models or config.spec.tiny_vlm
    shape = {k: getattr(tiny, k) for k in ("hidden_size", "num_layers") if getattr(tiny, k) is not None}
    return TinyLMSpec(arch=getattr(tiny, "arch", "mistral"), seed=tiny.seed, **shape)


def tiny_configs(config: EvolveConfig, run_dir: Path) -> dict[str, dict]:
    """Path -> config.json of each model ``tiny_models`` or ``tiny_vlm`` builds into ``run_dir``, as
    the factory writes it; nothing is built (a plan reads these)."""
    spec = config.spec
    tiny = spec.tiny_models or spec.tiny_vlm
    if tiny is None:
        return {}
    from tsugiki.factory import lm, vlm  # torch and transformers: only for a config with tiny models

    paths = source_paths(config, run_dir)
    text = _text_spec(config)
    out = {paths[n]: lm.config_json(text) for n in ("base", *(f"variant_{i}" for i in range(tiny.n))) if n not in spec.sources}
    if tiny is spec.tiny_vlm and "llava" not in spec.sources:
        out[paths["llava"]] = vlm.config_json(vlm.TinyVLMSpec(kind=tiny.kind, text=text))
    return out


def recipe_with_paths(recipe: dict, paths: Mapping[str, str]) -> dict:
    """A recipe's model refs that are source names replaced by their paths."""
    sub = lambda ref: paths.get(ref, ref) if isinstance(ref, str) else ref  # noqa: E731
    out = json.loads(json.dumps(recipe))
    if "base_model" in out:
        out["base_model"] = sub(out["base_model"])
    for m in out.get("models") or []:
        m["model"] = sub(m.get("model"))
    for s in out.get("slices") or []:
        if "base_model" in s:
            s["base_model"] = sub(s["base_model"])
        for src in s.get("sources") or []:
            src["model"] = sub(src.get("model"))
    return out


def search_threads(config: EvolveConfig):
    """Run a block with the search's torch thread count (``search.threads``), then restore it."""
    return torch_threads(config.spec.search.threads)


def model_config(path: str) -> tuple[dict, list[str]]:
    try:
        with open_checkpoint(path) as ckpt:
            return ckpt.config() or {}, ckpt.names()
    except TsugikiError as e:
        raise EvolutionError(f"source {path}: {e}") from None


def local_dir(ref: str) -> Path | None:
    """A source's local folder: the path itself, or a hub id's snapshot (fetched like any merge source);
    a ``MODEL+ADAPTER`` source's MODEL's (its config, tokenizer and processor are MODEL's)."""

    ref = split_lora_ref(ref)[0]
    p = Path(ref)
    if p.exists():
        return p if p.is_dir() else None
    if not HUB_ID.match(ref):
        return None  # the checkpoint loader reports the missing path
    try:
        return resolve_model_ref(ref)
    except TsugikiError as e:
        raise EvolutionError(f"source {ref}: {e}") from None


def is_vlm_path(ref: str) -> bool:
    d = local_dir(ref)
    return d is not None and is_vlm_source(d)


def read_json_config(ref: str) -> dict:
    d = local_dir(ref)
    path = d / "config.json" if d is not None else None
    if path is None or not path.exists():
        raise EvolutionError(f"source {ref}: no config.json")
    return json.loads(path.read_text())


def read_source_config(ref: str) -> dict:
    """A source's config.json alone: a local folder's, or a hub id's (that one small file is fetched, or
    read from the Hugging Face cache when offline); never any weights. A ``MODEL+ADAPTER`` source: MODEL's."""

    ref = split_lora_ref(ref)[0]
    p = Path(ref)
    if p.is_dir():
        for candidate in (p / "config.json", p / "unet" / "config.json"):
            if candidate.exists():
                return json.loads(candidate.read_text())
        raise EvolutionError(f"source {ref}: no config.json")
    if p.exists() or not HUB_ID.match(ref):
        raise EvolutionError(f"source {ref}: not a model folder or hub id")
    try:
        from huggingface_hub import hf_hub_download  # only for a hub id's config.json

        return json.loads(Path(hf_hub_download(ref, "config.json")).read_text())
    except Exception as e:  # offline and not cached, unknown repo, auth: one message
        raise EvolutionError(f"source {ref}: cannot read its config.json ({type(e).__name__})") from None


def load_causal_lm(path: str, device: str = "cpu"):
    """The model (float32, eval mode) and tokenizer of ``path``; of a ``MODEL+ADAPTER`` source, MODEL's: the
    in-memory merger writes every merged tensor into it (the adapter's included)."""
    from transformers import AutoModelForCausalLM  # transformers loads in seconds: only when a model loads

    path = split_lora_ref(path)[0]
    with hf_progress_bars_off():
        model = from_pretrained(AutoModelForCausalLM, path, dtype="float32").to(device)
    return model.eval(), load_tokenizer(path)


def load_vlm(path: str, device: str = "cpu"):
    """A LLaVA-family model (float32, eval mode) and its processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor  # as above

    with hf_progress_bars_off():
        model = from_pretrained(AutoModelForImageTextToText, path, dtype="float32").to(device)
    return model.eval(), from_pretrained(AutoProcessor, path)
