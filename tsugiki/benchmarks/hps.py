"""HPSv2 — Human Preference Score v2 (Wu et al. 2023, arXiv:2306.09341), higher is better.

HPS v2/v2.1 is open_clip's ViT-H-14 fine-tuned on human preference pairs; a checkpoint is an open_clip
state dict (`HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt`: `{"state_dict": {...}}`). Instead of
open_clip (which needs torchvision), tsugiki converts it by a key map kept as data
(`keymaps/openclip_to_hf_clip.json`, `${layer_index}` templates as in the merge engine's architecture
files) into transformers' `CLIPModel`, whose forward pass is the same computation.

    score(image, prompt) = 100 * cos(image_features, text_features)

(HPSv2 reports the raw cosine; papers and the EvoSDXL-JP table print it x 100.) Images are preprocessed
as HPSv2's validation transform: bicubic resize of the shorter side to 224, center crop 224, RGB in
[0, 1], then normalized with OpenAI CLIP's mean/std. Text uses the OpenAI CLIP BPE tokenizer (77 tokens),
given as a local transformers tokenizer folder (any `openai/clip-vit-*` or LAION CLIP tokenizer).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from tsugiki.errors import CheckpointError, TsugikiError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
HIGHER_IS_BETTER = True
LAYER = "${layer_index}"


@dataclass(frozen=True)
class KeyRule:
    openclip: str
    hf: tuple[str, ...]
    op: str  # copy | transpose | split


@dataclass(frozen=True)
class KeyMap:
    layers: tuple[tuple[str, str], ...]  # (open_clip prefix, hf prefix) templates
    layer_tensors: tuple[KeyRule, ...]
    tensors: tuple[KeyRule, ...]


@lru_cache(maxsize=1)
def openclip_keymap() -> KeyMap:
    raw = json.loads(resources.files("tsugiki.benchmarks").joinpath("keymaps/openclip_to_hf_clip.json").read_text())

    def rules(items):
        out = tuple(KeyRule(r["openclip"], tuple(r["hf"]), r["op"]) for r in items)
        bad = [r for r in out if r.op not in ("copy", "transpose", "split") or (r.op == "split") != (len(r.hf) == 3)]
        if bad:
            raise ValueError(f"openclip_to_hf_clip.json: bad rule {bad[0]}")
        return out

    return KeyMap(tuple((x["openclip"], x["hf"]) for x in raw["layers"]), rules(raw["layer_tensors"]), rules(raw["tensors"]))


def _expand(keymap: KeyMap, state: Mapping[str, torch.Tensor]) -> list[tuple[KeyRule, str, tuple[str, ...]]]:
    """Concrete (rule, open_clip key, hf keys) for every layer index present in `state`."""
    out = [(r, r.openclip, r.hf) for r in keymap.tensors]
    for oc_prefix, hf_prefix in keymap.layers:
        pattern = re.compile(re.escape(oc_prefix).replace(re.escape(LAYER), r"(\d+)"))
        indices = sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})
        for i in indices:
            oc, hf = oc_prefix.replace(LAYER, str(i)), hf_prefix.replace(LAYER, str(i))
            out += [(r, oc + r.openclip, tuple(hf + h for h in r.hf)) for r in keymap.layer_tensors]
    return out


def convert_openclip_state_dict(state: Mapping[str, torch.Tensor], *, label: str = "<state dict>") -> dict[str, torch.Tensor]:
    """open_clip CLIP tensors → transformers CLIPModel tensors. Strict: every input tensor must be
    consumed by exactly one rule and every rule must find its tensor."""
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for rule, src, dsts in _expand(openclip_keymap(), state):
        if src not in state:
            raise CheckpointError(f"{label}: open_clip tensor {src!r} missing")
        t = state[src]
        used.add(src)
        if rule.op == "copy":
            parts = [t]
        elif rule.op == "transpose":
            parts = [t.T.contiguous()]
        else:
            if t.shape[0] % 3:
                raise CheckpointError(f"{label}: {src!r} of shape {list(t.shape)} cannot be split into q, k, v")
            parts = list(t.chunk(3, dim=0))
        out.update({d: p.contiguous() for d, p in zip(dsts, parts)})
    extra = sorted(k for k in state if k not in used)
    if extra:
        raise CheckpointError(f"{label}: tensor {extra[0]!r} is not covered by the open_clip → CLIP key map "
                              f"({len(extra)} such; not a plain open_clip ViT CLIP?)")
    return out


def clip_config_from_openclip(state: Mapping[str, torch.Tensor], *, text_head_width: int = 64,
                              vision_head_width: int = 80, hidden_act: str = "gelu", eos_token_id: int = 49407,
                              bos_token_id: int = 49406):
    """A CLIPConfig read off the tensor shapes. Head widths are not visible in the shapes: the defaults
    are ViT-H-14's (text 1024/16 heads, vision 1280/16 heads); open_clip ViT-H-14 uses exact GELU."""
    from transformers import CLIPConfig

    def count(prefix: str) -> int:
        return len({k.split(".")[len(prefix.split(".")) - 1] for k in state if k.startswith(prefix)})

    tw, vw = state["ln_final.weight"].shape[0], state["visual.ln_pre.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text = dict(vocab_size=state["token_embedding.weight"].shape[0], hidden_size=tw,
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=count("transformer.resblocks."), num_attention_heads=tw // text_head_width,
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=hidden_act,
                layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=0)
    vision = dict(hidden_size=vw, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_hidden_layers=count("visual.transformer.resblocks."), num_attention_heads=vw // vision_head_width,
                  image_size=grid * patch, patch_size=patch, hidden_act=hidden_act, layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


def read_openclip_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: HPS checkpoint not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(p)
    if not allow_pickle:
        raise CheckpointError(f"{p}: pickle checkpoint refused (it can run code when loaded); pass --allow-pickle "
                              "(loaded with weights_only=True) or convert it to .safetensors")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: cannot load: {e}") from None
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    return data


def load_hps_model(path_or_state, *, allow_pickle: bool = False, device: str | torch.device = "cpu", **config_kw):
    """A transformers CLIPModel carrying the HPS weights (from a file or an open_clip state dict)."""
    from transformers import CLIPModel

    if isinstance(path_or_state, Mapping):
        state, label = path_or_state, "<state dict>"
    else:
        state, label = read_openclip_checkpoint(path_or_state, allow_pickle=allow_pickle), str(path_or_state)
    converted = convert_openclip_state_dict(state, label=label)
    model = CLIPModel(clip_config_from_openclip(state, **config_kw))
    own = model.state_dict()
    if set(own) != set(converted):
        missing = sorted(set(own) - set(converted))
        raise CheckpointError(f"{label}: converted weights do not fill CLIPModel (first missing: {missing[:1]})")
    for k, v in converted.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{label}: {k} has shape {list(v.shape)}, CLIPModel expects {list(own[k].shape)}")
    model.load_state_dict(converted, strict=True)
    return model.eval().to(device)


def load_clip_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    from tsugiki.hf_load import from_pretrained

    try:
        return from_pretrained(AutoTokenizer, str(path))
    except CheckpointError:  # a folder that names its own code: already one line
        raise
    except Exception as e:  # missing files, offline hub id, ...
        raise CheckpointError(f"{path}: cannot load a CLIP tokenizer ({type(e).__name__}: {e})") from None


def preprocess_images(images: Sequence, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL images (or uint8 H x W x 3 arrays) → (N, 3, size, size), as HPSv2's validation transform."""
    from PIL import Image

    out = []
    for image in images:
        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        im = im.resize((size, new_long) if w <= h else (new_long, size), Image.Resampling.BICUBIC)
        w, h = im.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        im = im.crop((left, top, left + size, top + size)).convert("RGB")  # RGB after resizing, as HPSv2
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])
    if not out:
        raise TsugikiError("HPS: empty image set")
    return torch.stack(out)


def hps_from_features(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """100 x cosine of each (image, text) pair (rows aligned)."""
    img = torch.nn.functional.normalize(image_features.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_features.double(), dim=-1)
    return 100.0 * (img * txt).sum(-1)


@torch.no_grad()
def hps_scores(model, tokenizer, images: Sequence, prompts: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """HPS of image i for prompt i."""
    if len(images) != len(prompts):
        raise TsugikiError(f"HPS: {len(images)} images but {len(prompts)} prompts")
    if not images:
        raise TsugikiError("HPS: empty image set")
    device = next(model.parameters()).device
    max_len = model.config.text_config.max_position_embeddings
    scores: list[float] = []
    for i in range(0, len(images), batch_size):
        pixels = preprocess_images(images[i:i + batch_size], model.config.vision_config.image_size).to(device)
        tokens = tokenizer(list(prompts[i:i + batch_size]), padding="max_length", truncation=True, max_length=max_len,
                           return_tensors="pt")
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(input_ids=tokens["input_ids"].to(device)).pooler_output
        scores += hps_from_features(img, txt).tolist()
    return scores
