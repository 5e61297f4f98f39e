"""Small helpers shared by test modules."""

import shutil

from safetensors.torch import load_file, save_file


def weights(path):
    """Every tensor of a model dir, read with the safetensors library (independent of tsugiki's reader)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def copy_model(src, dst, edit):
    """A copy of model dir `src` whose tensors pass through `edit(dict) -> dict`."""
    shutil.copytree(src, dst)
    tensors = weights(dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    save_file(edit(tensors), dst / "model.safetensors", metadata={"format": "pt"})
    return dst
