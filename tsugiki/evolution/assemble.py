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
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from tsugiki.errors import EvolutionError
from tsugiki.evolution.dfs import DFSPath


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


def check_compatible(models: Mapping[str, nn.Module]) -> None:
    """All DFS sources must share the architecture class and hidden size."""
    items = list(models.items())
    name0, m0 = items[0]
    for name, m in items[1:]:
        if type(m) is not type(m0):
            raise EvolutionError(f"DFS sources differ in architecture: {name0} is {type(m0).__name__}, {name} is {type(m).__name__}")
        if m.config.hidden_size != m0.config.hidden_size:
            raise EvolutionError(f"DFS sources differ in hidden size: {name0} {m0.config.hidden_size}, {name} {m.config.hidden_size}")
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
    return shell.eval()
