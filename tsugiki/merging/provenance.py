"""Outputs that describe themselves: which sources, named how, with which bytes.

A merged model dir's ``tsugiki_recipe.yaml`` and model card name each source the way it can be found
again, never by where it happened to sit on the machine that made it:

- a hub id stays a hub id;
- a path the user wrote as absolute stays that absolute path;
- any other local source (a path relative to the recipe or config that named it, a model a run built
  in its run dir) is written relative to the output dir, which is where a recipe's relative paths are
  looked up: ``tsugiki merge OUT/tsugiki_recipe.yaml`` finds it as long as the two keep their places
  (a run dir moved as a whole, say).

Each source is listed with how the user named it and the SHA-256 of each of its weight files (the
digest the Hugging Face hub shows for a file stored with LFS), so a copy found elsewhere can be checked.
A source that tsugiki made itself carries its own ``tsugiki_recipe.yaml``; the card embeds it (the PS
model inside a PS+DFS run, for instance), so the chain of merges is on the card.

Hashing reads every weight file once more. It runs in a thread of its own while the merge computes
(hashlib releases the GIL on large buffers) and the files are usually in the page cache by then. A
file version (path, size, modification time, inode, device) is hashed once: digests are kept in
``$TSUGIKI_CACHE/sha256`` (default ``~/.cache/tsugiki``), so merging the same sources again (an
evolution's exports, the demo, editing a recipe) costs nothing. Measured on 2 × 1.08 GB fp32 sources
on 2 cores: +1.5 s on a 1.6 s linear merge the first time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from tsugiki.fileio import atomic_write, cache_dir
from tsugiki.merging.refs import LORA_SEP, split_lora_ref

if TYPE_CHECKING:
    from tsugiki.merging.recipe import Recipe

RECIPE_FILE = "tsugiki_recipe.yaml"
CHUNK = 1 << 20
_DIGESTS: dict[str, str] = {}  # file version (path, size, mtime_ns, inode, device) -> SHA-256


@dataclass(frozen=True)
class Named:
    """How the user named a source (``given``) and where (``where``: "the recipe",
    "sources.ja in evolve.yaml", "built by the run (tiny_models)")."""

    given: str
    where: str = "the recipe"


class SourceDigests:
    """SHA-256 of every weight file of the sources, computed in a background thread; :meth:`result`
    waits for it (re-raising what the thread raised)."""

    def __init__(self, files: Mapping[str, Iterable[Path]]):
        self._files = {ref: list(fs) for ref, fs in files.items()}
        self._out: dict[str, list[tuple[str, str]]] = {}
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tsugiki-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for ref, files in self._files.items():
                self._out[ref] = [(f.name, self._digest(Path(f))) for f in files]
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._error = e

    def _digest(self, f: Path) -> str:
        st = f.stat()
        key = f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}"
        if key in _DIGESTS:
            return _DIGESTS[key]
        stored = _stored_digest(key)
        if stored is not None:
            _DIGESTS[key] = stored
            return stored
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                if self._cancelled.is_set():
                    return ""
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
        _store_digest(key, _DIGESTS[key])
        return _DIGESTS[key]

    def cancel(self) -> None:
        """Stop hashing (the merge failed: nobody will ask for the result)."""
        self._cancelled.set()
        self._thread.join()

    def result(self) -> dict[str, list[tuple[str, str]]]:
        self._thread.join()
        if self._cancelled.is_set():
            raise RuntimeError("source digests were cancelled")
        if self._error is not None:
            raise self._error
        return self._out


def _digest_file(key: str) -> Path:
    return cache_dir() / "sha256" / hashlib.sha1(key.encode()).hexdigest()


def _stored_digest(key: str) -> str | None:
    """A digest an earlier process computed for this very file version (path, size, mtime, inode, device)."""
    try:
        text = _digest_file(key).read_text().split()
    except OSError:
        return None
    if len(text) == 2 and text[1] == hashlib.sha1(key.encode()).hexdigest() and len(text[0]) == 64:
        return text[0]
    return None


def _store_digest(key: str, digest: str) -> None:
    try:
        path = _digest_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, f"{digest} {path.name}\n")
    except OSError:  # a read-only or full cache only costs the next merge a hash
        pass


def written_ref(ref: str, resolved: Path | None, out: Path, named: Named | None = None) -> str:
    """How ``tsugiki_recipe.yaml`` in ``out`` names a source (see the module doc); ``resolved`` is
    the local dir or file it was read from, None for a hub id."""
    given = (named or Named(ref)).given
    if resolved is None:
        return given
    if Path(given).expanduser().is_absolute():
        return str(Path(given).expanduser())
    return os.path.relpath(Path(resolved).resolve(), Path(out).resolve())


def _written_lora_ref(ref: str, out: Path, named: Named | None, base_dir: Path | None) -> str:
    """:func:`written_ref` of ``MODEL+ADAPTER``: each part written as a source of its own is."""
    from tsugiki.merging.checkpoint import local_path

    given = (named or Named(ref)).given
    parts, given_parts = split_lora_ref(ref), split_lora_ref(given)
    if given_parts[1] is None:  # named as a whole by something that is not a MODEL+ADAPTER ref
        given_parts = parts
    model = written_ref(parts[0], local_path(parts[0], base_dir=base_dir), out, Named(given_parts[0]))
    adapter = written_ref(parts[1], local_path(parts[1], base_dir=base_dir), out, Named(given_parts[1]))
    return f"{model}{LORA_SEP}{adapter}"


def recipe_header(digests: Mapping[str, list[tuple[str, str]]], written: Mapping[str, str]) -> str:
    """Comment lines for the top of ``tsugiki_recipe.yaml``: how refs resolve, each source's digests."""
    lines = ["# Written by tsugiki. Model refs are hub ids or paths; a relative path is relative to this file's folder.",
             "# SHA-256 of each source's weight files (README.md says how each source was named):"]
    for ref, files in digests.items():
        for name, digest in files:
            lines.append(f"#   {written[ref]}  {name}  {digest}")
    return "\n".join(lines) + "\n"


def sources_markdown(digests: Mapping[str, list[tuple[str, str]]], written: Mapping[str, str],
                     named: Mapping[str, Named], resolved: Mapping[str, Path | None], base: str | None) -> str:
    """The model card's "Sources" section: a table and the recipes of sources tsugiki made."""
    rows = ["| source in `tsugiki_recipe.yaml` | named as | weight files (SHA-256) |", "|---|---|---|"]
    made = []
    for ref, files in digests.items():
        n = named.get(ref, Named(ref))
        kind = "hub id" if resolved.get(ref) is None else "path"
        kind += " with a LoRA adapter merged in" if split_lora_ref(ref)[1] is not None else ""
        role = " (base)" if ref == base else ""
        sums = "<br>".join(f"`{name}` `{digest}`" for name, digest in files)
        rows.append(f"| `{written[ref]}`{role} | `{n.given}` ({kind}; {n.where}) | {sums} |")
        local = resolved.get(ref)
        recipe_file = (Path(local) if Path(local).is_dir() else Path(local).parent) / RECIPE_FILE if local else None
        if recipe_file is not None and recipe_file.is_file():
            made.append(f"`{written[ref]}` was made by tsugiki from this recipe (its paths are relative to that "
                        f"model's folder):\n\n```yaml\n{recipe_file.read_text().rstrip()}\n```\n")
    text = "\n".join(rows) + "\n\nA relative path is relative to this folder; check a copy of a source against its SHA-256.\n"
    return text + ("\n" + "\n".join(made) if made else "")


@dataclass(frozen=True)
class Description:
    """What a merged dir says about its sources: the recipe as written there, its header, the card section."""

    recipe: "Recipe"
    header: str
    card: str
    written: Mapping[str, str]  # each source's ref in the recipe given -> as written in the dir

    def write(self, out_dir: Path) -> list[str]:
        (out_dir / RECIPE_FILE).write_text(self.header + self.recipe.to_yaml())
        return [RECIPE_FILE]


def describe(recipe: "Recipe", digests: SourceDigests, out: Path, *, base_dir: Path | None = None,
             named: Mapping[str, Named] | None = None, extra_refs: Iterable[str] = ()) -> Description:
    """Rewrite ``recipe``'s refs for ``out`` (:func:`written_ref`) and describe its sources;
    ``extra_refs`` (refs the card names that the recipe does not) get a written form too."""
    from tsugiki.merging.checkpoint import local_path

    named = dict(named or {})
    sums = digests.result()
    refs = list(dict.fromkeys([*sums, *recipe.model_refs(include_tokenizer=True), *extra_refs]))
    resolved = {r: local_path(split_lora_ref(r)[0], base_dir=base_dir) for r in refs}
    written = {r: _written_lora_ref(r, out, named.get(r), base_dir) if split_lora_ref(r)[1] is not None
               else written_ref(r, resolved[r], out, named.get(r)) for r in refs}
    out_recipe = recipe.map_refs(lambda r: written.get(r, r))
    return Description(out_recipe, recipe_header(sums, written),
                       sources_markdown(sums, written, named, resolved, recipe.base_model), written)
