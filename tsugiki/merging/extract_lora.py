"""`tsugiki extract-lora`: a LoRA adapter of rank R from a fine-tune and its base (mergekit-extract-lora).

What mergekit 0.1.5's ``mergekit-extract-lora`` computes, and what this does, for each module of the
model (found by building the model's class from its config on the meta device, no weights):

- a linear layer (or, with ``embeddings``, an embedding): the task vector ``D = W_ft - W_base`` (an
  embedding's transposed), its SVD ``U S Vh`` in float32, and with ``k = min(R, len(S))``
  ``lora_A = sqrt(S_k) Vh_k`` and ``lora_B = U_k sqrt(S_k)``, in the weights' dtype; ``lora_alpha = r``, so
  peft's scaling is 1 and ``B @ A`` is the best rank-k approximation of D. A bias's task vector is
  stored as ``lora_B.bias`` (and ``lora_bias`` set, which mergekit leaves unset so that peft drops it);
- an embedding or the LM head without ``embeddings``, and any other module with weights (norms):
  stored whole (``modules_to_save``), as the fine-tune has them.

The adapter (``adapter_config.json``, ``adapter_model.safetensors``) loads with
``peft.PeftModel.from_pretrained`` and merges back as ``BASE+OUT`` in a recipe. Each module's
reconstruction error is reported: ``|D - B A|_F / |D|_F`` (0 where D is 0) and the largest absolute
entry of ``D - B A``; in ``extract_lora_errors.json`` beside the adapter, and as a table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.checkpoint import Checkpoint

ERRORS_FILE = "extract_lora_errors.json"
PREFIX = "base_model.model."


@dataclass(frozen=True)
class ModuleError:
    module: str
    kind: str  # "lora", "embedding lora" or "saved whole"
    rank: int
    rel_error: float
    max_abs_error: float


def module_kinds(config: dict, model_dir: Path, embeddings: bool) -> dict[str, str]:
    """Module name -> ``linear``, ``embedding`` or ``whole``, for every module that holds a weight."""
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from tsugiki.hf_load import from_pretrained

    cfg = from_pretrained(AutoConfig, model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    embed_in, embed_out = model.get_input_embeddings(), model.get_output_embeddings()
    kinds = {}
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        is_embedding = module is embed_in or module is embed_out or isinstance(module, nn.Embedding)
        if is_embedding and not embeddings:
            kinds[name] = "whole"
        elif isinstance(module, nn.Embedding):
            kinds[name] = "embedding"
        elif isinstance(module, nn.Linear):
            kinds[name] = "linear"
        else:
            kinds[name] = "whole"
    return kinds


def decompose(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``B @ A`` the best rank-``rank`` approximation of ``delta`` (singular values split
    evenly between the two), in ``delta``'s dtype."""
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    k = min(rank, s.shape[0])
    root = torch.diag(torch.sqrt(s[:k]))
    return (root @ vh[:k]).to(delta.dtype), (u[:, :k] @ root).to(delta.dtype)


def _errors(delta: torch.Tensor, approx: torch.Tensor) -> tuple[float, float]:
    diff = (delta.double() - approx.double())
    norm = float(delta.double().norm())
    return (float(diff.norm()) / norm if norm > 0 else 0.0), float(diff.abs().max()) if diff.numel() else 0.0


def extract(finetune: Checkpoint, base: Checkpoint, rank: int, kinds: dict[str, str]
            ) -> Iterator[tuple[str, torch.Tensor | None, ModuleError | None]]:
    """Adapter tensors (name, tensor) as they are computed, each module's error after its tensors (a
    ``(name, None, error)`` item)."""
    names = set(finetune.names())
    base_names = set(base.names())
    for module, kind in kinds.items():
        weight, bias = f"{module}.weight", f"{module}.bias"
        if weight not in names:
            continue  # a tied LM head, a buffer: nothing of its own in the checkpoint
        if kind == "whole":
            yield PREFIX + weight, finetune.read(weight), None
            if bias in names:
                yield PREFIX + bias, finetune.read(bias), None
            yield "", None, ModuleError(module, "saved whole", 0, 0.0, 0.0)
            continue
        if weight not in base_names:
            raise MergeError(f"{base.label}: tensor {weight!r} missing (present in {finetune.label})")
        ft, bw = finetune.read(weight), base.read(weight)
        if ft.shape != bw.shape:
            raise MergeError(f"{weight}: shape {list(ft.shape)} in {finetune.label}, {list(bw.shape)} in {base.label}")
        delta = ft - bw
        transpose = kind == "embedding"
        a, b = decompose(delta.T if transpose else delta, rank)
        approx = b.float() @ a.float()
        rel, worst = _errors(delta, approx.T if transpose else approx)
        if transpose:
            yield f"{PREFIX}{module}.lora_embedding_A", a, None
            yield f"{PREFIX}{module}.lora_embedding_B", b, None
        else:
            yield f"{PREFIX}{module}.lora_A.weight", a, None
            yield f"{PREFIX}{module}.lora_B.weight", b, None
        if bias in names and bias in base_names:
            yield f"{PREFIX}{module}.lora_B.bias", finetune.read(bias) - base.read(bias), None
        yield "", None, ModuleError(module, "embedding lora" if transpose else "lora", a.shape[0], rel, worst)


def adapter_config(base_ref: str, errors: list[ModuleError], has_bias: bool) -> dict:
    """adapter_config.json as mergekit writes it: ``r`` the largest rank, other ranks in ``rank_pattern``
    (and ``alpha_pattern``: alpha = rank everywhere), targets by their last name part."""
    ranks = {e.module: e.rank for e in errors if e.kind != "saved whole"}
    if not ranks:
        raise MergeError("the model has no linear (or embedding) module to extract a LoRA from")
    r = max(ranks.values())
    other = {m: k for m, k in ranks.items() if k != r}
    saved = list(dict.fromkeys(e.module.split(".")[-1] for e in errors if e.kind == "saved whole"))
    return {
        "base_model_name_or_path": base_ref, "peft_type": "LORA", "task_type": "CAUSAL_LM", "use_rslora": False,
        "target_modules": sorted({m.split(".")[-1] for m in ranks}), "modules_to_save": saved, "r": r,
        "lora_alpha": r, "rank_pattern": other, "alpha_pattern": dict(other), "lora_dropout": 0.0,
        "fan_in_fan_out": False, "inference_mode": True, "lora_bias": has_bias,
    }


def errors_json(errors: list[ModuleError], rank: int) -> str:
    rows = [{"module": e.module, "kind": e.kind, "rank": e.rank, "relative_frobenius_error": e.rel_error,
             "max_abs_error": e.max_abs_error} for e in errors]
    worst = max((e.rel_error for e in errors), default=0.0)
    return json.dumps({"rank": rank, "worst_relative_frobenius_error": worst, "modules": rows}, indent=1) + "\n"


def extract_lora_to_disk(model_ref: str, base_ref: str, rank: int, out: str | Path, *, embeddings: bool = False,
                        force: bool = False, allow_pickle: bool = False) -> list[ModuleError]:
    """Write the adapter dir ``out`` (atomically: nothing is left on an error) and return each module's error."""
    from safetensors.torch import save_file

    from tsugiki.merging.output_dir import AtomicOutputDir
    from tsugiki.merging.sources import open_checkpoint

    if rank < 1:
        raise MergeError(f"--rank must be at least 1, got {rank}")
    finetune = open_checkpoint(model_ref, allow_pickle=allow_pickle)
    try:
        base = open_checkpoint(base_ref, allow_pickle=allow_pickle)
    except BaseException:
        finetune.close()
        raise
    with finetune, base:
        kinds = module_kinds(finetune.config() or {}, finetune.model_dir, embeddings)
        tensors: dict[str, torch.Tensor] = {}
        errors: list[ModuleError] = []
        for name, tensor, error in extract(finetune, base, rank, kinds):
            if error is not None:
                errors.append(error)
            else:
                tensors[name] = tensor.contiguous()
        config = adapter_config(base_ref, errors, any(n.endswith(".lora_B.bias") for n in tensors))
        sources = [c.path for c in (finetune, base)]
        with AtomicOutputDir(out, force=force, sources=sources) as tmp:
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / ERRORS_FILE).write_text(errors_json(errors, rank))
            (tmp / "README.md").write_text(
                f"---\nlibrary_name: peft\nbase_model: {base_ref}\ntags: [lora, tsugiki]\n---\n# LoRA extracted by tsugiki\n\n"
                f"A rank-{rank} LoRA adapter of `{model_ref}` relative to `{base_ref}` (truncated SVD of each linear "
                f"layer's task vector{', embeddings included' if embeddings else ''}), extracted with "
                f"`tsugiki extract-lora`. Reconstruction errors per module: `{ERRORS_FILE}`.\n")
    return errors
