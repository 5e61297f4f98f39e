"""GGUF files (llama.cpp) as a source format, read exactly as transformers reads them.

A recipe may name a `.gguf` file as a model: `Checkpoint` hands such a file to `GgufFile`, which keeps
it memory-mapped (the `gguf` package's `GGUFReader`) and dequantizes a tensor only when the merge
reads it. Names and values are transformers' own, not a re-implementation: its GGUF config reading,
its GGUF→HF name map (built on the model class instantiated on the meta device, so no weights), and
its per-architecture fix-ups (llama.cpp stores Gemma's norm weights +1, and transformers subtracts 1
in float32; Llama's q/k rows are un-permuted). A tensor read here is therefore bit for bit what
`from_pretrained(..., gguf_file=..., dtype=torch.float32)` loads, and `import_gguf` writes that as a
plain Hugging Face model dir.

Only files whose tensors map one to one onto the model's are read tensor by tensor. Two kinds are
refused with a one-line error rather than approximated: MoE layouts that transformers stacks or
splits while loading, and the architectures it loads through its packed-GGUF path instead of the
per-tensor one reproduced here.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tsugiki.version import __version__
from tsugiki.errors import CheckpointError, MergeError
from tsugiki.merging.tensors import TensorInfo

SIDE_PREFIX = "tsugiki-gguf-side-"  # temp folders of GGUF side files (GGUFCheckpoint.side_files_dir)

log = logging.getLogger("tsugiki.gguf")

GGUF_MAGIC = b"GGUF"
# what a GGUF source presents: transformers' load with dtype=torch.float32
SOURCE_DTYPE = torch.float32
IMPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in IMPORT_DTYPES.items()}


def open_gguf(path: str | os.PathLike) -> "GgufFile":
    """The parsed file, shared by every `Checkpoint` of it in this process: parsing a GGUF (its
    vocabulary is metadata) takes seconds, and a merge opens each source more than once."""
    p = Path(path)
    try:
        st = p.resolve().stat()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read: {e.strerror or e}") from None
    return _open_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_cached(path: str, size: int, mtime_ns: int) -> "GgufFile":
    return GgufFile(Path(path))


def _add_bos(tokenizer) -> None:
    """Make ``tokenizer`` start every encoding with its BOS, as the GGUF's ``tokenizer.ggml.add_bos_token``
    asks: some transformers releases (5.19, which vLLM's CPU build pins) convert a GGUF vocabulary without
    it, others with it; the written tokenizer.json then says so itself, whichever release reads it."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or bos_id is None or tokenizer("a")["input_ids"][:1] == [bos_id]:
        return
    from tokenizers import processors

    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, bos_id)])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@contextmanager
def _alone(path: Path) -> Iterator[Path]:
    """A folder holding only (a link to) the file, so that transformers' `from_pretrained(dir,
    gguf_file=...)` cannot pick up some other model's config or tokenizer files lying beside it."""
    with tempfile.TemporaryDirectory(prefix="tsugiki-gguf-") as d:
        os.symlink(path.resolve(), Path(d) / path.name)
        yield Path(d)


class GgufFile:
    """One GGUF file: transformers' config for it, and its tensors under transformers' names."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._side_dir: Path | None = None
        self._tokenizer = None
        self._check_magic()
        try:
            from gguf import GGUFReader
            from transformers.modeling_gguf_pytorch_utils import (
                TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map, load_gguf_checkpoint, read_field,
            )
        except ImportError as e:  # the gguf package is a dependency; this is a broken install
            raise CheckpointError(f"{path}: reading GGUF files needs the `gguf` package ({e})") from None
        try:
            reader = GGUFReader(path)
        except Exception as e:  # gguf raises ValueError, IndexError, ... for corrupt or truncated files
            raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({_first_line(e)})") from None
        self.architecture = str(read_field(reader, "general.architecture")[0])
        self._add_bos = bool((read_field(reader, "tokenizer.ggml.add_bos_token") or [False])[0])
        self._refuse_packed_path()
        try:
            # the same raw config dict transformers reads, which its tensor fix-ups are given too
            raw = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        except Exception as e:  # unsupported architecture (ValueError) and whatever else transformers raises
            raise CheckpointError(f"{path}: transformers cannot read this GGUF file ({_first_line(e)})") from None
        self._config, model = _config_and_meta_model(path, raw)
        self.model_class = type(model).__name__
        self._processor = TENSOR_PROCESSORS.get(self.architecture, TensorProcessor)(config=raw)
        self._name_map = get_gguf_hf_weights_map(model, self._processor)
        self._tensors, self.infos = self._map_tensors(reader, model)

    def _check_magic(self) -> None:
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read: {e.strerror or e}") from None
        if magic != GGUF_MAGIC:
            raise CheckpointError(f"{self.path}: not a GGUF file (it does not start with the GGUF magic bytes)")

    def _refuse_packed_path(self) -> None:
        try:
            from transformers.integrations.gguf.utils import is_gguf_arch_supported
        except ImportError:  # a transformers without the packed path loads every architecture per tensor
            return
        if is_gguf_arch_supported(self.architecture):
            raise CheckpointError(
                f"{self.path}: GGUF architecture {self.architecture!r} is loaded by transformers' packed-GGUF path, "
                "which tsugiki does not reproduce tensor by tensor"
            )

    def _map_tensors(self, reader, model) -> tuple[dict, dict[str, TensorInfo]]:
        """GGUF tensors under the model's names, in file order; strict both ways (no name twice,
        no parameter of the model without a tensor, shapes agree), like any other conversion."""
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        tensors, infos = {}, {}
        for t in reader.tensors:
            hf_name = self._name_map.get(t.name)
            if hf_name is None:
                log.debug("%s: tensor %r has no transformers counterpart; transformers skips it too", self.path, t.name)
                continue
            if hf_name in tensors:
                raise CheckpointError(
                    f"{self.path}: tensors {tensors[hf_name].name!r} and {t.name!r} both become {hf_name!r} "
                    f"({self.architecture}: transformers joins them while loading; not readable tensor by tensor)"
                )
            shape = expected[hf_name]
            if torch.Size(shape).numel() != int(t.n_elements):
                raise CheckpointError(
                    f"{self.path}: tensor {t.name!r}: {int(t.n_elements)} values, but {self.model_class} "
                    f"expects {hf_name!r} of shape {list(shape)}"
                )
            tensors[hf_name] = t
            infos[hf_name] = TensorInfo(hf_name, SOURCE_DTYPE, shape, self.path, int(t.data_offset),
                                        torch.Size(shape).numel() * SOURCE_DTYPE.itemsize)
        # named_parameters() lists a tied parameter once, under its first name: a tied lm_head is not missing
        missing = [n for n, _ in model.named_parameters() if n not in tensors]
        if missing:
            raise CheckpointError(f"{self.path}: no tensor for {self.model_class}'s {missing[0]!r} ({len(missing)} missing)")
        return tensors, infos

    # -- tensors ---------------------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """One tensor, dequantized and fixed up as transformers does it, as float32 (memory the caller owns)."""
        from gguf import dequantize

        t = self._tensors[name]
        try:
            weights = dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{self.path}: tensor {t.name!r}: cannot dequantize {t.tensor_type.name} ({_first_line(e)})") from None
        scratch: dict = {"tensors": {}}
        result = self._processor.process(weights=weights, name=t.name, tensor_key_mapping=self._name_map,
                                         parsed_parameters=scratch)
        if result.name != t.name or scratch["tensors"]:
            raise CheckpointError(
                f"{self.path}: tensor {t.name!r}: transformers rewrites it together with others ({self.architecture}); "
                "not readable tensor by tensor"
            )
        tensor = torch.from_numpy(np.copy(result.weights)).to(SOURCE_DTYPE)
        info = self.infos[name]
        if tuple(tensor.shape) != info.shape:
            raise CheckpointError(
                f"{self.path}: tensor {t.name!r}: shape {list(tensor.shape)}, but {self.model_class} expects {list(info.shape)}"
            )
        return tensor

    # -- config and side files -------------------------------------------------------------------
    def config(self, dtype: torch.dtype = SOURCE_DTYPE) -> dict:
        """config.json as a loadable HF dir has it: no quantization_config, the model class named."""
        config = self._config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)  # where this process read it from, not part of the model
        config["architectures"] = [self.model_class]
        config["dtype"] = DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
        return json.loads(json.dumps(config))  # as read back from config.json (e.g. id2label keys are strings)

    def write_side_files(self, out: Path, dtype: torch.dtype = SOURCE_DTYPE) -> list[str]:
        """config.json, the tokenizer (transformers' conversion from the GGUF vocabulary) and
        generation_config.json when the config implies one; returns the names written."""
        from transformers import GenerationConfig

        before = set(os.listdir(out))
        (out / "config.json").write_text(json.dumps(self.config(dtype), indent=2, sort_keys=True) + "\n")
        self.tokenizer().save_pretrained(out)
        # what a GGUF-loaded model's generation_config is: derived from the config's token ids
        generation = GenerationConfig.from_model_config(self._config)
        if {k for k in generation.to_diff_dict() if k != "transformers_version"}:
            generation.save_pretrained(out)
        return sorted(set(os.listdir(out)) - before)

    def tokenizer(self):
        """transformers' tokenizer converted from the GGUF vocabulary (kept: converting a large
        vocabulary takes seconds, and both the import and a merge's side files want it)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from tsugiki.hf_load import from_pretrained

            try:
                with _alone(self.path) as d:
                    self._tokenizer = from_pretrained(AutoTokenizer, d, gguf_file=self.path.name, local_files_only=True)
            except Exception as e:  # transformers raises many types for a vocabulary it cannot convert
                raise CheckpointError(f"{self.path}: cannot convert its tokenizer ({_first_line(e)})") from None
            if self._add_bos:
                _add_bos(self._tokenizer)
        return self._tokenizer

    def side_files_dir(self) -> Path:
        """A folder with config, tokenizer and generation config: what `Checkpoint.model_dir` is for
        a GGUF, so the merge copies them like any model dir's. Made once per process, removed at exit; it holds
        an owner lock while the process lives, so one a killed process left is removed by the next one made."""
        from tsugiki.merging.output_dir import dead_owner, take_owner

        with self._lock:
            if self._side_dir is None:
                for old in Path(tempfile.gettempdir()).glob(f"{SIDE_PREFIX}*"):
                    if old.is_dir() and dead_owner(old) is not None:
                        shutil.rmtree(old, ignore_errors=True)
                d = Path(tempfile.mkdtemp(prefix=SIDE_PREFIX))
                try:
                    self._side_owner = take_owner(d)  # held (open) for the life of the process
                    self.write_side_files(d)
                except BaseException:
                    shutil.rmtree(d, ignore_errors=True)
                    raise
                atexit.register(shutil.rmtree, d, True)
                self._side_dir = d
            return self._side_dir


def _config_and_meta_model(path: Path, raw: dict):
    """transformers' config object for the raw GGUF config, and its causal-LM class built on the
    meta device (names and shapes only, no memory)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw.get("model_type")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(dict(raw))
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise CheckpointError(f"{path}: transformers has no causal-LM class for GGUF model type {model_type!r}") from None
    with torch.device("meta"):
        model = model_class(config)
    return config, model


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class GgufImport:
    out: Path
    tensors: int
    bytes_written: int
    sha256: str
    seconds: float


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: torch.dtype | str = torch.float32,
                force: bool = False) -> GgufImport:
    """A GGUF file → a Hugging Face model dir (safetensors, config, tokenizer, model card) that
    `from_pretrained(dir)` loads to the same model as `from_pretrained(..., gguf_file=...)`.
    Written tensor by tensor into a temp dir that becomes OUT only when complete."""
    from tsugiki.merging.output_dir import AtomicOutputDir
    from tsugiki.merging.writer import DEFAULT_MAX_SHARD_BYTES, OutputTensor, ShardedSafetensorsWriter

    start = time.perf_counter()
    if isinstance(dtype, str):
        if dtype not in IMPORT_DTYPES:
            raise MergeError(f"unknown dtype {dtype!r} (use one of {', '.join(IMPORT_DTYPES)})")
        dtype = IMPORT_DTYPES[dtype]
    path = Path(gguf_path)
    with AtomicOutputDir(out_dir, force=force, sources=[path]) as tmp:  # first: an existing OUT is refused before any work
        gguf = open_gguf(path)
        digest = sha256_of(path)
        entries = [OutputTensor(name, dtype, info.shape) for name, info in gguf.infos.items()]
        gguf.write_side_files(tmp, dtype)
        writer = ShardedSafetensorsWriter(tmp, entries, max_shard_bytes=DEFAULT_MAX_SHARD_BYTES,
                                          metadata={"tsugiki_gguf_source": path.name, "tsugiki_gguf_sha256": digest})
        try:
            for e in entries:
                writer.write(e.name, gguf.read(e.name).to(dtype))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        (tmp / "README.md").write_text(_model_card(path, digest, gguf, dtype))
    nbytes = sum(e.nbytes for e in entries)
    return GgufImport(Path(out_dir), len(entries), nbytes, digest, time.perf_counter() - start)


def _model_card(path: Path, digest: str, gguf: GgufFile, dtype: torch.dtype) -> str:
    return f"""---
library_name: transformers
tags: [gguf, tsugiki]
---
# Imported from GGUF

Converted with [tsugiki](https://pypi.org/project/tsugiki/) {__version__} (`tsugiki import-gguf`) from

- file: `{path.name}` ({path.stat().st_size} bytes)
- SHA-256: `{digest}`

GGUF architecture `{gguf.architecture}` → `{gguf.model_class}`; tensors dequantized exactly as
transformers' `from_pretrained(..., gguf_file=...)` does, stored as {str(dtype).removeprefix('torch.')}.
The tokenizer is transformers' conversion of the GGUF vocabulary. Quantization error is kept, not undone:
this is the quantized model at full precision, not the original.
"""
