"""Outputs a user can meet: `--force` onto folders tsugiki did not write, onto a source or the current
directory; output locations that cannot be written (a file in the way, read-only), refused before any work;
write errors (EROFS, EACCES, EIO) as one line, exit 2, the previous output kept and no temp dir left.
Read-only locations are simulated by a mocked OSError at the write (tests run as root), and made real
with a read-only tmpfs mount where the platform allows it."""

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import TEST_DATA, copy_model
from tsugiki.cli import main
from tsugiki.merging import output_dir
from tsugiki.merging.output_dir import MARKER_FILE, AtomicOutputDir

FIXTURES = TEST_DATA / "benchmarks"
PREDICTIONS = ["--predictions", str(FIXTURES / "sample-predictions"), "--dataset-dir", str(FIXTURES)]


def linear(*models) -> str:
    return "merge_method: linear\nmodels:\n" + "".join(f"  - {{model: {m}, parameters: {{weight: 1.0}}}}\n" for m in models)


@pytest.fixture
def recipe(tiny_siblings, tmp_path) -> Path:
    """A recipe over copies of two siblings (a broken refusal must not damage the session's models)."""
    a = copy_model(tiny_siblings.base, tmp_path / "src" / "a", lambda t: t)
    b = copy_model(tiny_siblings.variants[0], tmp_path / "src" / "b", lambda t: t)
    path = tmp_path / "r.yaml"
    path.write_text(linear(a, b))
    return path


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def debris(*dirs: Path) -> list[str]:
    return [p.name for d in dirs for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def one_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("tsugiki: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert str(f) in lines[0], lines[0]
    return lines[0]


def merge(recipe, out, *extra) -> int:
    return main(["merge", str(recipe), "-o", str(out), "-q", *extra])


# ------------------------------------------------------------------ --force replaces only what tsugiki wrote
def test_force_refuses_a_user_folder_and_leaves_it_untouched(recipe, tmp_path, capsys):
    u = tmp_path / "u"
    (u / "sub").mkdir(parents=True)
    (u / "thesis.txt").write_text("three years of work")
    (u / "sub" / "data.csv").write_text("1,2")
    before = snapshot(u)
    assert merge(recipe, u, "--force") == 2
    one_line(capsys, u, "tsugiki did not write", "thesis.txt", "sub")
    assert snapshot(u) == before and debris(tmp_path) == []
    f = tmp_path / "notes.txt"  # a file is not replaced either
    f.write_text("mine")
    assert merge(recipe, f, "--force") == 2
    one_line(capsys, f, "not a folder tsugiki wrote")
    assert f.read_text() == "mine"


def test_force_onto_a_source_or_around_one_is_refused(recipe, tmp_path, capsys):
    src = tmp_path / "src"
    before = snapshot(src)
    for out, how in [(src / "a", "is the source"), (src, "holds the source"), (src / "a" / "merged", "lies inside")]:
        assert merge(recipe, out, "--force") == 2, out
        one_line(capsys, out, how)
        assert snapshot(src) == before and debris(src, tmp_path) == []


def test_force_onto_the_current_directory_or_a_parent_is_refused(recipe, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", ".."):
        assert merge(recipe, out, "--force") == 2
        one_line(capsys, "current directory")
    assert debris(work, tmp_path) == [] and list(work.iterdir()) == []


def test_force_replaces_what_tsugiki_wrote(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    assert merge(recipe, out) == 0
    assert (out / MARKER_FILE).exists()
    assert merge(recipe, out, "--force") == 0  # its own output: replaced
    (out / MARKER_FILE).unlink()  # an older tsugiki's output: its model card says who wrote it
    assert merge(recipe, out, "--force") == 0 and (out / MARKER_FILE).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert merge(recipe, empty, "--force") == 0 and (empty / "README.md").exists()
    assert debris(tmp_path) == []


# ------------------------------------------------------------------ output locations checked before any work
def test_eval_results_dir_that_is_a_file_fails_before_any_model_is_evaluated(tmp_path, monkeypatch, capsys):
    from tsugiki.benchmarks import runner

    calls = []
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: calls.append(a))
    f = tmp_path / "f"
    f.write_text("not a folder")
    for results in (f, f / "sub"):
        assert main(["eval", "mgsm-ja", *PREDICTIONS, "--results-dir", str(results), "-q"]) == 2
        one_line(capsys, results, "is a file, not a folder")
    assert calls == [] and f.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [["merge", "{recipe}", "-q"], ["tiny", "lm"], ["tiny", "vlm"], ["tiny", "sdxl"]])
def test_output_under_a_file_is_refused_before_any_work(recipe, tmp_path, capsys, argv):
    f = tmp_path / "f"
    f.write_text("x")
    assert main([a.format(recipe=recipe) for a in argv] + ["-o", str(f / "out")]) == 2
    one_line(capsys, f / "out", f"{f} is a file, not a folder")
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f", "r.yaml", "src"]


# ------------------------------------------------------------------ write errors: one line, previous state kept
def _fail_mkdtemp(monkeypatch, out: Path, code: int) -> None:
    """The temp dir beside ``out`` cannot be made (``code``: EROFS, EACCES), as on a read-only location."""
    real = tempfile.mkdtemp

    def mkdtemp(*a, prefix=None, dir=None, **k):
        if prefix == f".{out.name}.tmp-" and Path(dir) == out.parent:
            raise OSError(code, os.strerror(code), str(Path(dir) / f"{prefix}x"))
        return real(*a, prefix=prefix, dir=dir, **k)

    monkeypatch.setattr(output_dir.tempfile, "mkdtemp", mkdtemp)


def _previous(out: Path) -> dict:
    with AtomicOutputDir(out) as tmp:  # a tsugiki-made output that --force may replace
        (tmp / "model.safetensors").write_bytes(b"previous")
    return snapshot(out)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("verb", ["merge", "import-gguf", "tiny lm"])
def test_write_error_is_one_line_and_keeps_the_previous_output(recipe, tmp_path, monkeypatch, capsys, verb, code):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"never read: the output is refused first")
    root = tmp_path / "models"
    out = root / "base" if verb == "tiny lm" else tmp_path / "out"
    before = _previous(out)
    _fail_mkdtemp(monkeypatch, out, code)
    argv = {"merge": ["merge", str(recipe), "-o", str(out), "-q", "--force"],
            "import-gguf": ["import-gguf", str(gguf), "-o", str(out), "--force"],
            "tiny lm": ["tiny", "lm", "-o", str(root), "-n", "1", "--kind", "perturbed"]}[verb]
    assert main(argv) == 2
    one_line(capsys, out, os.strerror(code))
    assert snapshot(out) == before and debris(tmp_path, out.parent) == []


def test_eval_write_error_is_one_line_and_keeps_the_previous_results(tmp_path, monkeypatch, capsys):
    from tsugiki import fileio

    results = tmp_path / "res"
    argv = ["eval", "mgsm-ja", *PREDICTIONS, "--results-dir", str(results), "-q"]
    assert main(argv) == 0
    before = snapshot(results)

    def read_only(path, *a, **k):
        if str(path).startswith(str(results)):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, *a, **k)

    monkeypatch.setattr(fileio, "open", read_only, raising=False)  # the atomic writes of results and leaderboard
    capsys.readouterr()
    assert main(argv) == 2
    one_line(capsys, results, os.strerror(errno.EACCES))
    assert snapshot(results) == before


def test_any_other_file_error_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from tsugiki.factory import lm

    def broken(*a, **k):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "x" / "model.safetensors"))

    monkeypatch.setattr(lm, "build_siblings", broken)
    assert main(["tiny", "lm", "-o", str(tmp_path / "x")]) == 2
    assert one_line(capsys) == f"tsugiki: error: {tmp_path / 'x' / 'model.safetensors'}: {os.strerror(errno.EIO)}"


# ------------------------------------------------------------------ a real read-only file system
@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs at ``tmp_path/ro`` holding ``old/`` (a tsugiki output), remounted read-only; skipped where
    mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        _previous(ro / "old")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_mount(recipe, read_only_mount, monkeypatch, capsys):
    from tsugiki.benchmarks import runner

    before = snapshot(read_only_mount)
    for out in (read_only_mount / "old", read_only_mount / "new", read_only_mount / "a" / "b"):
        assert merge(recipe, out, "--force") == 2
        one_line(capsys, out, "Read-only file system")
    calls = []
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: calls.append(a))
    assert main(["eval", "mgsm-ja", *PREDICTIONS, "--results-dir", str(read_only_mount / "res"), "-q"]) == 2
    one_line(capsys, read_only_mount / "res", "Read-only file system")
    assert calls == [] and snapshot(read_only_mount) == before
