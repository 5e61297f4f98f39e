"""The ``hf`` engine: a transformers causal LM in this process.

Generation is greedy with a KV cache, prompts left-padded in batches of ``batch_size``; a row leaves the
batch (its cache rows are dropped) as soon as it reaches EOS or a stop string, so a batch costs what its
rows need rather than its longest row. Teacher-forced scores run the LM head only at the answer
positions (:func:`head_logits`): with Gemma's 262k-token vocabulary the head costs more than the body.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from tsugiki.engines.base import AnswerScores, Engine, EngineError, EngineOptions, check_sequences


class HFEngine(Engine):
    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, options: EngineOptions | None = None, ref: str = "<in memory>"):
        self.model, self.options, self.ref = model, options or EngineOptions(), ref
        self.tokenizer = copy.copy(tokenizer)  # left padding without changing a shared tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def open(cls, model: Any, options: EngineOptions, *, tokenizer: Any = None) -> "HFEngine":
        """``model``: a loaded causal LM (with ``tokenizer``) or a model dir / hub id to load."""
        if not isinstance(model, (str, Path)):
            if tokenizer is None:
                raise EngineError("the hf engine around a loaded model needs its tokenizer")
            return cls(model, tokenizer, options)
        from transformers import AutoModelForCausalLM

        from tsugiki.hf_load import from_pretrained
        from tsugiki.tokenizer_cache import load_tokenizer

        try:
            tok = tokenizer or load_tokenizer(model)
            kwargs = {"dtype": getattr(torch, options.dtype)} if options.dtype else {}
            lm = from_pretrained(AutoModelForCausalLM, str(model), **kwargs)
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load causal LM {model}: {e}") from None
        return cls(lm.to(options.device).eval(), tok, options, str(model))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        import transformers

        return {"engine": "hf", "transformers": transformers.__version__,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}

    # ------------------------------------------------------------------------- weights
    def load_model(self, model: Any) -> None:
        if model is not self.model:
            self.load_weights(model.state_dict().items())

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        params = self.model.state_dict()
        for name, tensor in weights:
            if name not in params:
                raise EngineError(f"the model has no tensor {name!r}")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise EngineError(f"{name}: shape {tuple(tensor.shape)} does not fit {tuple(params[name].shape)}")
            params[name].copy_(tensor)

    # ------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[str], *, stop: Sequence[str] = (), max_new_tokens: int = 256,
                 batch_size: int | None = None) -> list[str]:
        out: list[str] = []
        size = max(int(batch_size or self.options.batch_size), 1)
        for start in range(0, len(prompts), size):
            out += self._generate_batch(list(prompts[start:start + size]), tuple(stop), int(max_new_tokens))
        return out

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str], stop: tuple[str, ...], max_new_tokens: int) -> list[str]:
        tok, device = self.tokenizer, self.device
        enc = tok(prompts, return_tensors="pt", padding=True)
        mask = enc["attention_mask"].to(device)
        ids = enc["input_ids"].to(device)
        eos = _eos_ids(self.model, tok)
        done: list[list[int] | None] = [None] * len(prompts)
        new: list[list[int]] = [[] for _ in prompts]
        rows = list(range(len(prompts)))  # the batch's rows, as indices into prompts
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        window = max((len(s) for s in stop), default=0) + 8  # tokens whose text can hold a stop string
        for _ in range(max_new_tokens):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1).tolist()
            keep = []
            for k, (i, t) in enumerate(zip(rows, nxt)):
                if t in eos:
                    done[i] = new[i]
                    continue
                new[i].append(t)
                if stop and any(s in tok.decode(new[i][-window:], skip_special_tokens=True) for s in stop):
                    done[i] = new[i]
                    continue
                keep.append(k)
            if len(keep) < len(rows):
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                rows = [rows[k] for k in keep]
            ids = torch.tensor([[new[i][-1]] for i in rows], device=device)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1
        texts = tok.batch_decode([d if d is not None else n for d, n in zip(done, new)], skip_special_tokens=True)
        return [truncate_at_stop(t, stop) for t in texts]

    # ------------------------------------------------------------------------- teacher forcing
    @torch.no_grad()
    def sequence_logprobs(self, seqs: Sequence[Sequence[int]], starts: Sequence[int], *,
                          batch_size: int | None = None) -> list[AnswerScores]:
        check_sequences(seqs, starts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        size = max(int(batch_size or 64), 1)
        for b in range(0, len(seqs), size):
            bseqs, bstarts = seqs[b:b + size], starts[b:b + size]
            width = max(len(s) for s in bseqs)
            ids = torch.full((len(bseqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(bseqs), width), dtype=torch.long)
            for i, s in enumerate(bseqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            rows = torch.cat([torch.full((len(s) - st,), i) for i, (s, st) in enumerate(zip(bseqs, bstarts))])
            cols = torch.cat([torch.arange(st - 1, len(s) - 1) for s, st in zip(bseqs, bstarts)])
            logits = _logits_at(self.model, ids, mask, rows, cols)
            logp = torch.log_softmax(logits, dim=-1)
            k = 0
            for i, (s, st) in enumerate(zip(bseqs, bstarts)):
                n = len(s) - st
                target = ids[i, st:len(s)]
                out.append((logp[k:k + n].gather(1, target[:, None])[:, 0], logits[k:k + n].argmax(-1) == target))
                k += n
        return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` before the earliest stop string (vLLM excludes the stop string from the output)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _eos_ids(model, tokenizer) -> set[int]:
    """The ids generation ends at: the generation config's ``eos_token_id`` (one or a list) and the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


def _logits_at(model, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float32 logits at positions ``(rows[k], cols[k])`` only. With a 262k-token vocabulary (Gemma 3) the LM
    head costs more than the transformer body per position, so the head runs only where a score needs it;
    models without a separable decoder and head get full logits, indexed."""
    device = next(model.parameters()).device
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is model:
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        return logits[rows, cols].float().cpu()
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    return head_logits(model, hidden[rows.to(device), cols.to(device)]).cpu()


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the LM head for already selected hidden states, soft-capped as the model's forward
    would (Gemma's ``final_logit_softcapping``, on the model's or, for a LLaVA, its text config). Scorers and
    trainers that need logits at a few positions (answer tokens) run the 262k-token head only there."""
    logits = model.get_output_embeddings()(hidden).float()
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None) or getattr(getattr(config, "text_config", None),
                                                                     "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
