"""A model with a peft LoRA adapter merged in, read lazily tensor by tensor (mergekit's ``MODEL+ADAPTER``).

mergekit 0.1.5 loads MODEL with transformers, applies ADAPTER with ``peft.PeftModel.from_pretrained``,
calls ``merge_and_unload()`` and saves the result in ``--lora-merge-cache``, which it then merges. What
that computes, per tensor, and what :class:`LoraCheckpoint` computes when a tensor is read (no merged copy
is written anywhere):

- a linear layer's weight ``W`` (``<module>.weight``): ``W += transpose(B @ A, fan_in_fan_out) * scaling``,
  in place in W's dtype (peft's ``Linear.merge``); with ``lora_bias`` also ``bias += B.bias * scaling``;
- an embedding's weight: ``W += ((B @ A).T * scaling).to(W.dtype)`` (peft's ``Embedding.merge``);
- ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``, where ``r`` and ``alpha`` are the
  module's entries in ``rank_pattern``/``alpha_pattern`` (peft's ``get_pattern_key``) or ``r``/``lora_alpha``;
- A and B in float32 whatever their stored dtype (peft keeps adapter weights in float32 on a float16 or
  bfloat16 model: ``autocast_adapter_dtype``);
- a tensor the adapter stores whole (``modules_to_save``, an embedding's ``base_layer`` saved with
  ``save_embedding_layers``) replaces the model's, cast to the model's dtype, before any delta.

The adapter's config and weights are read with peft (``PeftConfig.from_pretrained``,
``load_peft_weights``; a hub id is fetched the way peft fetches it). What peft merges differently
(DoRA, trainable tokens, ``target_parameters``, other peft types, convolutions) is refused, as is an
adapter that does not fit the model (a module it lacks, another shape): one line naming the adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tsugiki.errors import CheckpointError
from tsugiki.merging.checkpoint import HUB_ID, Checkpoint, file_stamp, local_path
from tsugiki.merging.refs import split_revision

PREFIX = "base_model.model."
REFUSED = {  # adapter_config.json keys whose non-default value peft merges in ways tsugiki does not
    "use_dora": "DoRA (use_dora)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "target_parameters",
    "layer_replication": "layer_replication",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
}


@dataclass(frozen=True)
class LoraDelta:
    """The low-rank update of one model tensor."""

    a: torch.Tensor  # [r, in] (an embedding's: [r, vocab])
    b: torch.Tensor  # [out, r] (an embedding's: [dim, r])
    scaling: float
    embedding: bool
    fan_in_fan_out: bool = False

    def shape(self) -> tuple[int, ...]:
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.embedding or self.fan_in_fan_out else (rows, cols)

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` plus the update, as peft's merge computes it (``w`` is changed in place and returned)."""
        product = self.b @ self.a
        if self.embedding:
            w += (product.T * self.scaling).to(w.dtype)
        else:
            w += (product.T if self.fan_in_fan_out else product) * self.scaling
        return w


class LoraAdapter:
    """A peft LoRA adapter (a local folder or a hub id, ``@revision`` allowed): for each model tensor it
    changes, the update (:class:`LoraDelta`) or the whole replacement."""

    def __init__(self, ref: str, *, base_dir: Path | None = None, allow_pickle: bool = False):
        self.ref = ref
        path, revision = split_revision(ref)
        local = local_path(path, base_dir=base_dir)
        if local is None and not HUB_ID.match(path):
            raise CheckpointError(f"adapter {ref}: no such folder (and not a hub id)")
        if local is not None:
            if not local.is_dir():
                raise CheckpointError(f"adapter {ref}: not a folder (a peft adapter is a folder with adapter_config.json)")
            if not (local / "adapter_config.json").is_file():
                raise CheckpointError(f"adapter {ref}: no adapter_config.json in {local} (not a peft adapter folder)")
            has_safetensors = (local / "adapter_model.safetensors").is_file()
            if not has_safetensors and (local / "adapter_model.bin").is_file() and not allow_pickle:
                raise CheckpointError(f"adapter {ref}: {local / 'adapter_model.bin'}: pickle adapter refused (it can run "
                                      "code when loaded); convert it to safetensors or pass --allow-pickle")
            if not has_safetensors and not (local / "adapter_model.bin").is_file():
                raise CheckpointError(f"adapter {ref}: no adapter_model.safetensors in {local}")
        where = str(local) if local is not None else path
        self.local = local
        self.files = [local / n for n in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
                      if (local / n).is_file()] if local is not None else []
        self.config = self._read_config(where, revision)
        self.replaced: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, LoraDelta] = {}
        self.bias_deltas: dict[str, LoraDelta] = {}
        self._read_weights(where, revision)

    def _read_config(self, where: str, revision: str | None):
        from peft import PeftConfig  # peft imports transformers (seconds): only for a recipe with an adapter

        from tsugiki.hf_load import from_pretrained

        try:
            config = from_pretrained(PeftConfig, where, **({"revision": revision} if revision else {}))
        except Exception as e:  # peft raises ValueError, OSError, hub errors, TypeError for unknown keys
            if self.local is None:  # offline, unknown repo, auth: reported as for a model
                raise CheckpointError(f"adapter {self.ref}: not a local folder and could not be fetched from the hub "
                                      f"({type(e).__name__})") from None
            raise CheckpointError(f"adapter {self.ref}: cannot read adapter_config.json ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        peft_type = getattr(config.peft_type, "value", config.peft_type)
        if peft_type != "LORA":
            raise CheckpointError(f"adapter {self.ref}: a {peft_type} adapter; only LoRA adapters can be merged into a model")
        for key, what in REFUSED.items():
            if getattr(config, key, None):
                raise CheckpointError(f"adapter {self.ref}: {what} is not supported")
        return config

    def _read_weights(self, where: str, revision: str | None) -> None:
        from peft.utils import load_peft_weights
        from peft.utils.other import get_pattern_key

        try:
            weights = load_peft_weights(where, **({"revision": revision} if revision else {}))
        except Exception as e:  # a corrupt file, offline and not cached, ...
            raise CheckpointError(f"adapter {self.ref}: cannot read its weights ({type(e).__name__}: {e})") from None
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in weights.items():
            if not key.startswith(PREFIX):
                raise CheckpointError(f"adapter {self.ref}: weight {key!r} is not under {PREFIX!r} (not a LoRA adapter's)")
            name = key[len(PREFIX):]
            for part in ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_embedding_A", "lora_embedding_B",
                         "base_layer.weight", "base_layer.bias"):
                if name.endswith("." + part):
                    modules.setdefault(name[: -len(part) - 1], {})[part] = t
                    break
            else:
                if ".lora_" in name:
                    raise CheckpointError(f"adapter {self.ref}: weight {key!r} is not one tsugiki can merge")
                self.replaced[name] = t  # modules_to_save: the module's tensors, stored whole
        cfg = self.config
        for module, parts in modules.items():
            for p in ("weight", "bias"):
                if f"base_layer.{p}" in parts:
                    self.replaced[f"{module}.{p}"] = parts[f"base_layer.{p}"]
            embedding = "lora_embedding_A" in parts
            a = parts.get("lora_embedding_A" if embedding else "lora_A.weight")
            b = parts.get("lora_embedding_B" if embedding else "lora_B.weight")
            if a is None and b is None:
                continue
            if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise CheckpointError(f"adapter {self.ref}: {module}: lora_A {_shape(a)} and lora_B {_shape(b)} do not "
                                      "make a low-rank update (convolution adapters are not supported)")
            r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), module), cfg.r)
            alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), module), cfg.lora_alpha)
            if a.shape[0] != r:
                raise CheckpointError(f"adapter {self.ref}: {module}: rank {a.shape[0]} in its weights, {r} in its config")
            scaling = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
            delta = LoraDelta(a.float(), b.float(), scaling, embedding, bool(cfg.fan_in_fan_out) and not embedding)
            self.deltas[f"{module}.weight"] = delta
            if "lora_B.bias" in parts:
                self.bias_deltas[f"{module}.bias"] = LoraDelta(a, parts["lora_B.bias"].float(), scaling, False)

    def check_fits(self, model: Checkpoint, model_ref: str) -> None:
        """Refuse an adapter that names a tensor ``model`` lacks or has in another shape."""
        names = set(model.names())
        for name, shape in [*((n, d.shape()) for n, d in self.deltas.items()),
                            *((n, tuple(t.shape)) for n, t in self.replaced.items()),
                            *((n, (d.b.shape[0],)) for n, d in self.bias_deltas.items())]:
            if name not in names:
                raise CheckpointError(f"adapter {self.ref} does not fit {model_ref}: it changes {name!r}, "
                                      f"which {model_ref} does not have")
            have = model.info(name).shape
            if tuple(have) != tuple(shape):
                raise CheckpointError(f"adapter {self.ref} does not fit {model_ref}: {name} is {list(shape)} in the "
                                      f"adapter, {list(have)} in the model (an adapter of another base?)")

    def changes(self, name: str) -> bool:
        return name in self.deltas or name in self.replaced or name in self.bias_deltas

    def apply(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Model tensor ``name`` (``w``, not changed) with the adapter merged in."""
        out = self.replaced[name].to(w.dtype).clone() if name in self.replaced else w.clone()
        if name in self.deltas:
            out = self.deltas[name].apply(out)
        if name in self.bias_deltas:
            d = self.bias_deltas[name]
            out += d.b.reshape(-1) * d.scaling
        return out


def _shape(t: torch.Tensor | None) -> str:
    return "missing" if t is None else str(list(t.shape))


class LoraCheckpoint(Checkpoint):
    """MODEL's checkpoint with ADAPTER merged into each tensor it changes, when that tensor is read; the
    rest is MODEL's, mapped zero-copy as by :class:`Checkpoint`. Config, tokenizer and other files are
    MODEL's (``model_dir``); ``weight_files`` adds the adapter's files, so a merged model's card lists
    and hashes them with the model's."""

    def __init__(self, model_path: str | Path, adapter_ref: str, *, allow_pickle: bool = False, label: str,
                 base_dir: Path | None = None, where: str = ""):
        super().__init__(model_path, allow_pickle=allow_pickle, label=label)
        try:
            self.adapter = LoraAdapter(adapter_ref, base_dir=base_dir, allow_pickle=allow_pickle)
            self.adapter.check_fits(self, label.rsplit("+", 1)[0])
        except CheckpointError as e:
            self.close()
            raise CheckpointError(f"{where}{e}") from None
        self._merged: dict[str, torch.Tensor] = {}
        self._adapter_stamps = {f: file_stamp(f) for f in self.adapter.files}

    def read(self, name: str) -> torch.Tensor:
        if not self.adapter.changes(name):
            return super().read(name)
        if name in self._merged:
            return self._merged[name].clone()
        return self.adapter.apply(name, super().view(name))

    def view(self, name: str) -> torch.Tensor:
        """As :meth:`Checkpoint.view`; a tensor the adapter changes is computed once and kept until
        :meth:`release` (a merge views each input more than once)."""
        if not self.adapter.changes(name):
            return super().view(name)
        if name not in self._merged:
            self._merged[name] = self.adapter.apply(name, super().view(name))
            super().release(name)
        return self._merged[name]

    def release(self, name: str) -> None:
        if self._merged.pop(name, None) is None:
            super().release(name)

    def weight_files(self) -> list[Path]:
        return super().weight_files() + list(self.adapter.files)

    def check_unchanged(self) -> None:
        super().check_unchanged()
        for f, stamp in self._adapter_stamps.items():
            if not f.exists() or file_stamp(f) != stamp:
                raise CheckpointError(f"{f}: changed while it was being read (size, modification time or inode differ); "
                                      f"nothing was written, run again once it is stable")
