"""HPSv2 through transformers' CLIPModel: key-map coverage, equivalence with an open_clip-layout reference
forward pass written here from open_clip's module structure, the score formula, preprocessing, errors."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tsugiki.benchmarks import hps
from tsugiki.errors import CheckpointError, TsugikiError

WIDTH_T, WIDTH_V, EMBED, LAYERS_T, LAYERS_V, HEADS, PATCH, GRID, CTX, VOCAB = 16, 24, 12, 2, 3, 2, 4, 2, 8, 50



# ---- an open_clip-layout CLIP (names as open_clip's CLIP / VisionTransformer / ResidualAttentionBlock) ----
class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * d, d))]))

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(d) for _ in range(layers))

    def forward(self, x, mask=None):
        for b in self.resblocks:
            x = b(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH_V, PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH_V))
        self.positional_embedding = nn.Parameter(torch.randn(GRID * GRID + 1, WIDTH_V))
        self.ln_pre = nn.LayerNorm(WIDTH_V)
        self.transformer = Transformer(WIDTH_V, LAYERS_V)
        self.ln_post = nn.LayerNorm(WIDTH_V)
        self.proj = nn.Parameter(torch.randn(WIDTH_V, EMBED))

    def forward(self, img):
        x = self.conv1(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipReference(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, WIDTH_T)
        self.positional_embedding = nn.Parameter(torch.randn(CTX, WIDTH_T))
        self.transformer = Transformer(WIDTH_T, LAYERS_T)
        self.ln_final = nn.LayerNorm(WIDTH_T)
        self.text_projection = nn.Parameter(torch.randn(WIDTH_T, EMBED))
        self.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.visual = Visual()

    def encode_text(self, text):
        mask = torch.full((CTX, CTX), float("-inf")).triu(1)
        x = self.transformer(self.token_embedding(text) + self.positional_embedding, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(-1)] @ self.text_projection  # EOT has the largest id


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = OpenClipReference().eval()
    with torch.no_grad():
        for p in ref.parameters():  # no symmetric init: a swapped or untransposed tensor must show
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] in (WIDTH_T, WIDTH_V) else 0.0))
    return ref


@pytest.fixture(scope="module")
def converted(reference):
    return hps.load_hps_model(reference.state_dict(), text_head_width=WIDTH_T // HEADS,
                              vision_head_width=WIDTH_V // HEADS, eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 2)


def test_keymap_covers_every_tensor(reference):
    from transformers import CLIPModel

    state = reference.state_dict()
    out = hps.convert_openclip_state_dict(state)
    model = CLIPModel(hps.clip_config_from_openclip(state, text_head_width=8, vision_head_width=12))
    assert set(out) == set(model.state_dict())
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in state.values())
    assert torch.equal(out["text_projection.weight"], state["text_projection"].T)
    q, k, v = (out[f"vision_model.encoder.layers.2.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(torch.cat([q, k, v]), state["visual.transformer.resblocks.2.attn.in_proj_weight"])


def test_config_read_off_shapes(reference):
    cfg = hps.clip_config_from_openclip(reference.state_dict(), text_head_width=8, vision_head_width=12)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (WIDTH_T, LAYERS_T, 2)
    assert (t.max_position_embeddings, t.vocab_size) == (CTX, VOCAB)
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (WIDTH_V, LAYERS_V, 2)
    assert (v.patch_size, v.image_size) == (PATCH, GRID * PATCH)
    assert cfg.projection_dim == EMBED


def test_features_match_openclip_forward(reference, converted):
    torch.manual_seed(1)
    img = torch.randn(3, 3, GRID * PATCH, GRID * PATCH)
    text = torch.tensor([[VOCAB - 2, 5, 7, VOCAB - 1, 0, 0, 0, 0], [VOCAB - 2, 9, 3, 4, 11, 2, VOCAB - 1, 0]])
    with torch.no_grad():
        image_features = converted.get_image_features(pixel_values=img).pooler_output
        text_features = converted.get_text_features(input_ids=text).pooler_output
        torch.testing.assert_close(image_features, reference.visual(img), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text_features, reference.encode_text(text), rtol=1e-5, atol=1e-5)


class _Tok:
    """A stand-in tokenizer returning fixed ids (the real one is transformers' CLIPTokenizer)."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, prompts, **kw):
        return {"input_ids": torch.tensor(self.ids[: len(prompts)])}


def test_score_is_100_cosine(reference, converted):
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 10, 3), dtype=np.uint8)) for i in range(2)]
    ids = [[VOCAB - 2, 5, 7, VOCAB - 1, 0, 0, 0, 0], [VOCAB - 2, 9, VOCAB - 1, 0, 0, 0, 0, 0]]
    got = hps.hps_scores(converted, _Tok(ids), images, ["a", "b"])
    pixels = hps.preprocess_images(images, GRID * PATCH)
    with torch.no_grad():
        fi, ft = reference.visual(pixels).double(), reference.encode_text(torch.tensor(ids)).double()
    direct = [100 * float(a @ b / (a.norm() * b.norm())) for a, b in zip(fi, ft)]
    assert got == pytest.approx(direct, rel=1e-5)


def test_preprocess_resize_crop_normalize():
    wide = Image.new("RGB", (300, 200), (255, 128, 0))
    x = hps.preprocess_images([wide])
    assert x.shape == (1, 3, 224, 224)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(hps.CLIP_MEAN)) / torch.tensor(hps.CLIP_STD)
    torch.testing.assert_close(x[0, :, 100, 100], expected.float(), rtol=0, atol=1e-6)
    # center crop: a tall image whose top and bottom quarters are black keeps only the white middle
    tall = np.zeros((448, 224, 3), dtype=np.uint8)
    tall[112:336] = 255
    y = hps.preprocess_images([tall])
    white = (1.0 - torch.tensor(hps.CLIP_MEAN)) / torch.tensor(hps.CLIP_STD)
    torch.testing.assert_close(y[0, :, 1:-1, 1:-1].mean((1, 2)), white.float(), rtol=0, atol=1e-3)


def test_bad_inputs(reference, converted, tmp_path):
    state = dict(reference.state_dict())
    with pytest.raises(CheckpointError, match="'visual.extra' is not covered"):
        hps.convert_openclip_state_dict({**state, "visual.extra": torch.zeros(1)})
    del state["ln_final.bias"]
    with pytest.raises(CheckpointError, match="'ln_final.bias' missing"):
        hps.convert_openclip_state_dict(state)
    with pytest.raises(TsugikiError, match="empty image set"):
        hps.hps_scores(converted, _Tok([]), [], [])
    with pytest.raises(TsugikiError, match="2 images but 1 prompts"):
        hps.hps_scores(converted, _Tok([]), [np.zeros((4, 4, 3), np.uint8)] * 2, ["a"])
    pt = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": reference.state_dict()}, pt)
    with pytest.raises(CheckpointError, match="pickle checkpoint refused"):
        hps.load_hps_model(pt)
    model = hps.load_hps_model(pt, allow_pickle=True, text_head_width=8, vision_head_width=12)
    assert torch.equal(model.visual_projection.weight, reference.visual.proj.T)
    with pytest.raises(CheckpointError, match="not found"):
        hps.load_hps_model(tmp_path / "missing.pt")
