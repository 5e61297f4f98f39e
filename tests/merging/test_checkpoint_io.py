"""Lazy safetensors reading and streaming sharded writing, checked against the safetensors library."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tsugiki.errors import CheckpointError, OutputExistsError
from tsugiki.merging.checkpoint import Checkpoint, parse_safetensors_header
from tsugiki.merging.output_dir import MARKER_FILE, AtomicOutputDir
from tsugiki.merging.writer import OutputTensor, ShardedSafetensorsWriter, plan_shards

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.uint8]


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, dt in enumerate(DTYPES):
        x = torch.randn(3, 5 + i, generator=g) * 10
        out[f"t{i}.{str(dt).split('.')[-1]}"] = x.to(dt) if dt != torch.bool else x > 0
    out["scalar"] = torch.tensor(3.5)
    out["empty"] = torch.zeros(0, 4)
    return out


def test_reader_matches_safetensors_library(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    with Checkpoint(tmp_path) as ck:
        assert sorted(ck.names()) == sorted(tensors)
        for name, ref in tensors.items():
            got = ck.read(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(got, ref), name


@pytest.mark.parametrize("max_bytes", [1, 64, 10**9])
def test_streaming_writer_roundtrip_and_shards(tmp_path, max_bytes):
    tensors = sample_tensors()
    entries = [OutputTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    w = ShardedSafetensorsWriter(tmp_path, entries, max_shard_bytes=max_bytes)
    for n, t in tensors.items():
        w.write(n, t)
    files = w.close()
    n_shards = len(plan_shards(entries, max_bytes))
    if n_shards == 1:
        assert files == ["model.safetensors"]
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors)
        assert index["metadata"]["total_size"] == sum(e.nbytes for e in entries)
    # the official library reads what we wrote
    loaded = {}
    for f in files:
        if f.endswith(".safetensors"):
            loaded.update(load_file(tmp_path / f))
    assert set(loaded) == set(tensors)
    for n, t in tensors.items():
        assert torch.equal(loaded[n], t)
    # and so does our reader
    with Checkpoint(tmp_path) as ck:
        for n, t in tensors.items():
            assert torch.equal(ck.read(n), t)


@pytest.mark.parametrize("max_bytes", [64, 10**9])
def test_writer_thread_writes_the_same_bytes(tmp_path, max_bytes):
    """Writing in the writer's own thread (the default) gives the files a write in the caller's thread gives."""
    tensors = sample_tensors()
    entries = [OutputTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    for background in (True, False):
        (tmp_path / str(background)).mkdir()
        w = ShardedSafetensorsWriter(tmp_path / str(background), entries, max_shard_bytes=max_bytes, background=background)
        for n, t in tensors.items():
            w.write(n, t)
        files = w.close()
    assert files and all((tmp_path / "True" / f).read_bytes() == (tmp_path / "False" / f).read_bytes() for f in files)


def test_writer_thread_failure_reaches_the_caller(tmp_path, monkeypatch):
    """A write that fails in the writer thread (a full disk) is raised in the caller's thread by the next
    write or by close, and the thread is gone afterwards; abort after a failure does not hang."""
    import errno
    import threading

    entries = [OutputTensor(f"t{i}", torch.float32, (4,)) for i in range(4)]
    real_write = ShardedSafetensorsWriter._write

    def full_disk(self, shard, data):
        if self._open_shard != -1:  # the header and the first tensor fit, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, shard, data)

    monkeypatch.setattr(ShardedSafetensorsWriter, "_write", full_disk)
    w = ShardedSafetensorsWriter(tmp_path, entries)
    with pytest.raises(OSError, match="No space left"):
        for e in entries:
            w.write(e.name, torch.ones(4))
        w.close()
    w.abort()
    assert not any(t.name == "tsugiki-writer" for t in threading.enumerate())


def test_write_with_wait_has_read_the_tensor_when_it_returns(tmp_path):
    """wait=True (a view of a mapped input, released right after): once write returns the writer thread
    has taken the bytes, so changing the tensor afterwards does not change the file."""
    entries = [OutputTensor(f"t{i}", torch.float32, (1000,)) for i in range(3)]
    w = ShardedSafetensorsWriter(tmp_path, entries)
    for e in entries:
        t = torch.ones(1000)
        w.write(e.name, t, wait=True)
        t.fill_(7.0)
    w.close()
    assert all(torch.equal(v, torch.ones(1000)) for v in load_file(tmp_path / "model.safetensors").values())


def test_passthrough_result_is_its_mapped_input(tmp_path):
    from tsugiki.merging.sources import open_sources
    from tsugiki.merging.execute import aliases_input, iter_merged
    from tsugiki.merging.plan import plan_merge
    from tsugiki.merging.recipe import Recipe

    save_file({"a": torch.ones(4096), "b": torch.zeros(4096)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    recipe = Recipe.from_dict({"merge_method": "passthrough", "models": [{"model": str(tmp_path)}]})
    sources = open_sources(recipe.model_refs())
    try:
        flags = [aliases_input(job, t, sources) for job, t in iter_merged(plan_merge(recipe, sources), sources)]
    finally:
        for s in sources.values():
            s.close()
    assert flags == [True, True]


def test_writer_refuses_out_of_plan(tmp_path):
    w = ShardedSafetensorsWriter(tmp_path, [OutputTensor("a", torch.float32, (2,))])
    with pytest.raises(Exception, match="expected a"):
        w.write("a", torch.zeros(3))


def test_truncated_file_names_file_and_tensor(tmp_path):
    save_file({"w": torch.ones(100), "v": torch.ones(10)}, tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[:-16])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*tensor '(w|v)'.*truncated"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("payload", [b"", b"abc", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"{{{{",
                                     struct.pack("<Q", 2) + b"[]"])
def test_garbage_files_are_checkpoint_errors(tmp_path, payload):
    (tmp_path / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Checkpoint(tmp_path)


def test_header_offsets_must_match_shape(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CheckpointError, match="tensor 'w'.*do not match shape"):
        parse_safetensors_header(tmp_path / "x.safetensors")


def test_pickle_refused_unless_allowed(tmp_path):
    torch.save({"w": torch.arange(6.0)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle checkpoint refused.*--allow-pickle"):
        Checkpoint(tmp_path)
    with Checkpoint(tmp_path, allow_pickle=True) as ck:
        assert torch.equal(ck.read("w"), torch.arange(6.0))


def test_index_with_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard 'model-00001-of-00002.safetensors'.*missing"):
        Checkpoint(tmp_path)


def test_missing_tensor_lookup(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    with Checkpoint(tmp_path) as ck, pytest.raises(CheckpointError, match="tensor 'nope' not found"):
        ck.read("nope")


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with AtomicOutputDir(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with AtomicOutputDir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(OutputExistsError):
        with AtomicOutputDir(out):
            pass
    with AtomicOutputDir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
