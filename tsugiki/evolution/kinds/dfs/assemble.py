"""Build a DFS candidate as a real Hugging Face causal LM that copies no weights.

The candidate is a shallow *shell* of the first path layer's model: its module objects are new, every
parameter and buffer is the source model's own tensor. Its decoder stack is a list of
:class:`PathLayer` s, each a reference to an existing decoder layer of some source model plus

- the KV-cache index of its position on the path (the wrapped attention's ``layer_idx`` is set to it
  for the duration of the call, so a layer used twice keeps two cache entries), and
- the scale applied to the hidden state entering it (Akiba et al. 2024, arXiv:2403.13187, Sec. 3.2).

Embeddings come from the first path layer's model; final norm and LM head from the last one's (tied
embeddings stay the first model's). ``generate`` works on the shell. Evaluate candidates one at a time
per process: a PathLayer changes its layer's ``layer_idx`` while it runs.

Layers of different kinds (Gemma 3: sliding-window or full attention, each with its own rotary
parameters) keep their kind at any path position. The decoder's forward picks each layer's mask,
rotary embedding and cache layer by ``config.layer_types[i]``, so the shell's config lists the path
layers' own types; its rotary module is rebuilt when a path brings a type the host model lacks. The
window, the rotary parameters per type and the other settings a config holds once for all layers must
agree across sources (:data:`SHARED_CONFIG_KEYS`): the shell computes masks and rotary embeddings
from one config, and so does the exported checkpoint.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from tsugiki.errors import EvolutionError
from tsugiki.evolution.kinds.dfs.space import DFSPath


class PathLayer(nn.Module):
    """One position of the inference path: a reference to ``layer``, its KV-cache index and input scale."""

    def __init__(self, layer: nn.Module, kv_index: int, scale: float = 1.0):
        super().__init__()
        self.layer = layer
        self.kv_index = kv_index
        self.scale = float(scale)
        # plain list (not registered): the modules whose cache index is redirected while this layer runs
        self.__dict__["_indexed"] = [m for m in layer.modules() if hasattr(m, "layer_idx")]
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.scale != 1.0:
            hidden_states = hidden_states * self.scale
        saved = [m.layer_idx for m in self._indexed]
        for m in self._indexed:
            m.layer_idx = self.kv_index
        try:
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            for m, idx in zip(self._indexed, saved):
                m.layer_idx = idx

    def extra_repr(self) -> str:
        return f"kv_index={self.kv_index}, scale={self.scale:.4g}"


def decoder_of(model: nn.Module) -> nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    if dec is None or not all(hasattr(dec, a) for a in ("layers", "embed_tokens", "norm")):
        raise EvolutionError(f"{type(model).__name__}: DFS needs a decoder with layers, embed_tokens and norm (Llama-style)")
    return dec


# config settings read once for every layer (by the decoder, or by each layer at construction): a
# path layer only behaves as in its source, and the export (one config.json) only equals the shell,
# when all sources agree on them
SHARED_CONFIG_KEYS = (
    "rope_parameters", "rope_theta", "rope_scaling", "sliding_window", "use_bidirectional_attention",
    "head_dim", "num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_act",
    "hidden_activation", "rms_norm_eps", "query_pre_attn_scalar", "attn_logit_softcapping",
    "final_logit_softcapping", "attention_bias", "mlp_bias",
)


def check_compatible(models: Mapping[str, nn.Module]) -> None:
    """All DFS sources must share the architecture class, the hidden size and :data:`SHARED_CONFIG_KEYS`."""
    items = list(models.items())
    name0, m0 = items[0]
    for name, m in items[1:]:
        if type(m) is not type(m0):
            raise EvolutionError(f"DFS sources differ in architecture: {name0} is {type(m0).__name__}, {name} is {type(m).__name__}")
        if m.config.hidden_size != m0.config.hidden_size:
            raise EvolutionError(f"DFS sources differ in hidden size: {name0} {m0.config.hidden_size}, {name} {m.config.hidden_size}")
        for key in SHARED_CONFIG_KEYS:
            a, b = getattr(m0.config, key, None), getattr(m.config, key, None)
            if a != b:
                raise EvolutionError(f"DFS sources differ in config {key}: {name0} {a!r}, {name} {b!r}")
    for name, m in items:
        decoder_of(m)


def assemble(models: Mapping[str, nn.Module], path: DFSPath) -> nn.Module:
    """The candidate model for ``path`` over ``models`` (short name -> loaded causal LM), sharing weights."""
    first_name, last_name = path.layers[0][0], path.layers[-1][0]
    host = models[first_name]
    host_dec = decoder_of(host)
    # deepcopy copies module objects and the config, never a tensor: every parameter, buffer and the
    # host's own decoder layers map to themselves
    memo: dict[int, object] = {id(t): t for t in host.parameters()}
    memo.update({id(t): t for t in host.buffers()})
    memo[id(host_dec.layers)] = host_dec.layers
    shell = copy.deepcopy(host, memo)
    dec = decoder_of(shell)
    stack = []
    for k, ((name, layer), scale) in enumerate(zip(path.layers, path.scales)):
        src_layers = decoder_of(models[name]).layers
        if not 0 <= layer < len(src_layers):
            raise EvolutionError(f"{name} has no layer {layer}")
        stack.append(PathLayer(src_layers[layer], k, scale if k else 1.0))
    dec.layers = nn.ModuleList(stack)
    last = models[last_name]
    dec.norm = decoder_of(last).norm
    if not getattr(shell.config, "tie_word_embeddings", False):
        shell.set_output_embeddings(last.get_output_embeddings())
    cfg = shell.config
    cfg.num_hidden_layers = len(path.layers)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [models[n].config.layer_types[i] for n, i in path.layers]
        _rotary_for_types(dec, cfg)
    return shell.eval()


def _rotary_for_types(dec: nn.Module, cfg) -> None:
    """Rebuild the shell's rotary module when it has no embedding for a layer type on the path (a
    per-type rotary, Gemma 3's, holds only its model's types). Rotary parameters are the same in
    every source (check_compatible), so the new module computes what each layer's own model would."""
    rotary = getattr(dec, "rotary_emb", None)
    types = getattr(rotary, "layer_types", None)
    if rotary is None or types is None or set(cfg.layer_types) <= set(types):
        return
    ref = next(iter(rotary.buffers()), None)
    new = type(rotary)(cfg, device=ref.device if ref is not None else None)
    dec.rotary_emb = new.to(ref.dtype) if ref is not None else new
