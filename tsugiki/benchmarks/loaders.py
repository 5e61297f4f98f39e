"""Loaders for JA-VG-VQA-500, JA-VLM-Bench-In-the-Wild and MGSM, built on ``datasets``.

A *source* is a hub id (loaded online with ``datasets.load_dataset``) or a local path:
a ``.parquet`` file, a ``.jsonl`` file whose ``image`` column holds paths relative to the file, or
a folder holding ``{split}.parquet`` / ``{split}-*.parquet`` / ``data/{split}-*.parquet`` (the hub's
layout) or ``{split}.jsonl``. Columns must be exactly the hub schema; anything else is an error
that lists the missing and unexpected columns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from tsugiki.benchmarks.items import MathItem, VQAItem
from tsugiki.benchmarks.jsonl import read_jsonl, read_text_utf8
from tsugiki.errors import BenchmarkError


@dataclass(frozen=True)
class Schema:
    title: str
    hub_id: str
    columns: tuple[str, ...]


JA_VG_VQA_500 = Schema("JA-VG-VQA-500", "SakanaAI/JA-VG-VQA-500",
                       ("image_id", "url", "width", "height", "coco_id", "flickr_id", "qas", "image"))
QA_KEYS = ("qa_id", "question", "answer", "q_objects", "a_objects")
JA_VLM_WILD = Schema("JA-VLM-Bench-In-the-Wild", "SakanaAI/JA-VLM-Bench-In-the-Wild",
                     ("page_url", "image_url", "image", "question", "answer"))
MGSM_HUB_ID = "juletxara/mgsm"  # the seed's source: config per language, columns question, answer_number


def check_columns(title: str, where: str, found, expected) -> None:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if missing or extra:
        parts = ([f"missing columns {missing}"] if missing else []) + ([f"unexpected columns {extra}"] if extra else [])
        raise BenchmarkError(f"{title} at {where}: wrong schema: {'; '.join(parts)} (expected {list(expected)})")


# --------------------------------------------------------------------------- rows from a source


def _is_local(source: str | Path) -> bool:
    s = str(source)
    return isinstance(source, Path) or os.path.exists(s) or s.startswith((".", "/", "~")) or s.endswith((".parquet", ".jsonl"))


def _local_files(folder: Path, split: str) -> list[Path]:
    for pattern in (f"{split}.parquet", f"{split}-*.parquet", f"data/{split}-*.parquet", f"data/{split}.parquet",
                    f"{split}.jsonl", f"data/{split}.jsonl"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    candidates = sorted([*folder.glob("*.parquet"), *folder.glob("*.jsonl")])
    if len(candidates) == 1:
        return candidates
    raise BenchmarkError(f"{folder}: no {split}.parquet, {split}-*.parquet, data/{split}-*.parquet or {split}.jsonl"
                         + (f" (found {[c.name for c in candidates]})" if candidates else ""))


def _dataset_rows(ds, schema: Schema, where: str) -> Iterator[tuple[str, dict]]:
    from datasets import Image

    check_columns(schema.title, where, ds.column_names, schema.columns)
    if isinstance(ds.features.get("image"), Image):
        ds = ds.cast_column("image", Image(decode=False))  # decode lazily, in VQAItem.load_image
    for i, row in enumerate(ds):
        yield f"{where} row {i}", row


def _parquet_rows(files: list[Path], schema: Schema) -> Iterator[tuple[str, dict]]:
    import datasets

    where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} parquet files)"
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # no "Generating train split" bar for a local file
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as e:  # pyarrow and datasets raise many types for a bad file
        raise BenchmarkError(f"cannot read {where}: {e}") from None
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    yield from _dataset_rows(ds, schema, where)


def _jsonl_rows(path: Path, schema: Schema) -> Iterator[tuple[str, dict]]:
    for lineno, row in read_jsonl(path):
        check_columns(schema.title, f"{path}:{lineno}", list(row), schema.columns)
        yield f"{path}:{lineno}", row


def rows(source: str | Path, split: str, schema: Schema) -> tuple[Path | None, list[tuple[str, dict]]]:
    """(folder that relative image paths are read from, [(where, row)]) for ``source``."""
    if not _is_local(source):
        import datasets

        try:
            ds = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # offline, unknown id, no such split...
            raise BenchmarkError(f"cannot load {schema.title} from the hub ({source}, split {split}): "
                                 f"{type(e).__name__}: {e}; pass a local copy instead") from None
        return None, list(_dataset_rows(ds, schema, f"{source}[{split}]"))
    path = Path(source).expanduser()
    if not path.exists():
        raise BenchmarkError(f"{schema.title}: {path} does not exist")
    files = _local_files(path, split) if path.is_dir() else [path]
    if files[0].suffix == ".jsonl":
        return files[0].parent, list(_jsonl_rows(files[0], schema))
    if files[0].suffix == ".parquet":
        return files[0].parent, list(_parquet_rows(files, schema))
    raise BenchmarkError(f"{schema.title}: {path} is neither .parquet nor .jsonl")


# --------------------------------------------------------------------------- VQA


def _image(cell: Any, base: Path | None, where: str) -> Any:
    """Encoded bytes, a path, or a PIL image from an ``image`` cell (hub struct, path string, image)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        path = Path(cell) if base is None or Path(cell).is_absolute() else base / cell
        if not path.is_file():
            raise BenchmarkError(f"{where}: image file {path} does not exist")
        return path
    if cell is not None and hasattr(cell, "convert"):  # an already decoded PIL image
        return cell
    raise BenchmarkError(f"{where}: no image (got {type(cell).__name__})")


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise BenchmarkError(f"{where}: {column} must be text, got {type(value).__name__}")
    return value


def _first_qa(qas: Any, where: str) -> dict:
    """``qas[0]``, as the seed evaluates; accepts a list of dicts or datasets' dict of lists."""
    if isinstance(qas, dict):  # a Sequence-of-struct feature comes back as a dict of lists
        qas = [dict(zip(qas, values)) for values in zip(*qas.values())]
    if not isinstance(qas, list) or not qas or not isinstance(qas[0], dict):
        raise BenchmarkError(f"{where}: qas must be a non-empty list of {{{', '.join(QA_KEYS)}}}")
    check_columns(JA_VG_VQA_500.title, f"{where} qas[0]", list(qas[0]), QA_KEYS)
    return qas[0]


def load_ja_vg_vqa(source: str | Path | None = None, split: str = "test") -> list[VQAItem]:
    """JA-VG-VQA-500 (500 test rows; train has 1000): one item per row, its ``qas[0]``; id = qa_id."""
    base, found = rows(source or JA_VG_VQA_500.hub_id, split, JA_VG_VQA_500)
    items = []
    for where, row in found:
        qa = _first_qa(row["qas"], where)
        items.append(VQAItem(id=str(qa["qa_id"]), question=_text(qa["question"], where, "question"),
                             answer=_text(qa["answer"], where, "answer"), image=_image(row["image"], base, where)))
    return _unique(items, JA_VG_VQA_500.title)


def load_ja_vlm_wild(source: str | Path | None = None, split: str = "test") -> list[VQAItem]:
    """JA-VLM-Bench-In-the-Wild (50 questions over 42 images); id = row number."""
    base, found = rows(source or JA_VLM_WILD.hub_id, split, JA_VLM_WILD)
    return [VQAItem(id=str(i), question=_text(row["question"], where, "question"),
                    answer=_text(row["answer"], where, "answer"), image=_image(row["image"], base, where))
            for i, (where, row) in enumerate(found)]


def _unique(items: list, title: str) -> list:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise BenchmarkError(f"{title}: item id {item.id} appears twice")
        seen.add(item.id)
    return items


# --------------------------------------------------------------------------- MGSM


def packaged_mgsm(lang: str) -> Path:
    """The vendored MGSM file (CC BY 4.0, see ``tsugiki/benchmarks/data/mgsm/README.md``)."""
    return Path(str(resources.files("tsugiki.benchmarks") / "data" / "mgsm" / f"mgsm_{lang}.tsv"))


def _mgsm_tsv(path: Path) -> list[MathItem]:
    items = []
    for lineno, line in enumerate(read_text_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise BenchmarkError(f"{path}:{lineno}: expected question<TAB>answer, found {len(fields)} fields")
        question, answer = fields
        if not re.fullmatch(r"-?[0-9]{1,3}(?:,[0-9]{3})*|-?[0-9]+", answer.strip()):
            raise BenchmarkError(f"{path}:{lineno}: answer {answer!r} is not an integer")
        value = int(answer.strip().replace(",", ""))  # four answers are written "2,125" etc.
        items.append(MathItem(id=str(len(items)), question=question, answer=value))
    if not items:
        raise BenchmarkError(f"{path}: no problems")
    return items


def load_mgsm(lang: str = "ja", source: str | Path | None = None) -> list[MathItem]:
    """MGSM in ``lang`` (250 test problems): the vendored TSV by default, a local TSV (or a folder
    with ``mgsm_{lang}.tsv``), or a hub id with the seed's schema (config ``lang``, split ``test``,
    columns ``question`` and ``answer_number``). Ids are row numbers."""
    if source is None:
        path = packaged_mgsm(lang)
        if not path.is_file():
            raise BenchmarkError(f"no MGSM data for language {lang!r} in this package (have: ja, en)")
        return _mgsm_tsv(path)
    if _is_local(source) or str(source).endswith(".tsv"):
        path = Path(source).expanduser()
        path = path / f"mgsm_{lang}.tsv" if path.is_dir() else path
        if not path.is_file():
            raise BenchmarkError(f"MGSM: {path} does not exist")
        return _mgsm_tsv(path)
    import datasets

    try:
        ds = datasets.load_dataset(str(source), lang, split="test")
    except Exception as e:
        raise BenchmarkError(f"cannot load MGSM from the hub ({source}, {lang}): {type(e).__name__}: {e}") from None
    missing = [c for c in ("question", "answer_number") if c not in ds.column_names]
    if missing:
        raise BenchmarkError(f"MGSM at {source}: missing columns {missing}")
    return [MathItem(id=str(i), question=r["question"], answer=int(r["answer_number"])) for i, r in enumerate(ds)]
