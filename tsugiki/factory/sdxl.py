"""Tiny SDXL pipelines in the real diffusers format, built offline in seconds, deterministic by seed.

The UNet has SDXL base's exact block structure — 3 down blocks (plain, cross-attention,
cross-attention), a cross-attention mid block, 3 up blocks, 2 resnets per down block, transformer depths
1/2/10, linear projections, `text_time` add-embeddings — so its 1680 tensors carry exactly SDXL's
names (only the channel counts are tiny). Two CLIP text encoders (CLIPTextModel and
CLIPTextModelWithProjection) use a small byte-level CLIP BPE tokenizer built here, a tiny AutoencoderKL
and SDXL's Euler scheduler complete the folder that `StableDiffusionXLPipeline.from_pretrained` loads.

    base = build_tiny_sdxl(tmp / "base", seed=0)
    variant = build_tiny_sdxl(tmp / "v1", seed=0, unet_seed=1)  # same text encoders/VAE, other UNet
    export_single_file(base, tmp / "base.safetensors")           # original (sgm) layout
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tsugiki.diffusion.layout import TEXT_ENCODER_PREFIX, diffusers_to_original

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# a few merges so that common prompt words are not all single bytes (their results join the vocab)
MERGES = ("a t</w>", "t h", "th e</w>", "o f</w>", "i n", "o n", "e r", "c at</w>", "d o", "do g</w>", "p h",
          "ph o", "pho t", "phot o</w>", "s t", "r e", "a n", "an d</w>", "i n</w>", "o n</w>")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def build_clip_tokenizer():
    """A byte-level CLIP BPE tokenizer (any text encodes, Japanese included) with a ~540-token vocab."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    for m in MERGES:
        a, b = m.split(" ")
        tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    merges = [tuple(m.split(" ")) for m in MERGES]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


@dataclass(frozen=True)
class TinySDXLSpec:
    text_width: int = 16  # each text encoder; the UNet's cross_attention_dim is twice this
    unet_channels: tuple[int, int, int] = (8, 16, 32)
    vae_channels: tuple[int, ...] = (8, 16)
    latent_size: int = 8  # images are latent_size * 2 ** (len(vae_channels) - 1) pixels square
    time_embed_dim: int = 8


def _text_configs(spec: TinySDXLSpec, vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig

    common = dict(vocab_size=vocab_size, hidden_size=spec.text_width, intermediate_size=2 * spec.text_width,
                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, projection_dim=spec.text_width,
                  bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return CLIPTextConfig(hidden_act="quick_gelu", **common), CLIPTextConfig(hidden_act="gelu", **common)


def build_unet(spec: TinySDXLSpec = TinySDXLSpec()):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=spec.latent_size, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=spec.unet_channels, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(1, 2, 2),
        norm_num_groups=4, cross_attention_dim=2 * spec.text_width, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=spec.time_embed_dim,
        projection_class_embeddings_input_dim=spec.text_width + 6 * spec.time_embed_dim,
    )


def build_tiny_sdxl(out: str | Path, *, seed: int = 0, unet_seed: int | None = None,
                    spec: TinySDXLSpec = TinySDXLSpec()) -> Path:
    """Write a tiny SDXL pipeline folder. `seed` fixes text encoders and VAE; `unet_seed` (default:
    `seed`) the UNet, so pipelines with one seed and different unet_seeds differ only in their UNet."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    tokenizer = build_clip_tokenizer()
    bos, eos = tokenizer.convert_tokens_to_ids([BOS, EOS])
    cfg1, cfg2 = _text_configs(spec, len(tokenizer), bos, eos)
    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = CLIPTextModel(cfg1), CLIPTextModelWithProjection(cfg2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=spec.vae_channels,
                        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels), layers_per_block=1,
                        norm_num_groups=4, sample_size=spec.latent_size * 2 ** (len(spec.vae_channels) - 1),
                        scaling_factor=0.13025, force_upcast=False)
    torch.manual_seed(seed if unet_seed is None else unet_seed)
    unet = build_unet(spec)
    _spread(unet, seed if unet_seed is None else unet_seed)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1,
                                       prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    from tsugiki.merging.output_dir import AtomicOutputDir  # lazily: factory models need no merge engine

    with AtomicOutputDir(out, force=True) as tmp:  # a killed build leaves no half-written pipeline
        pipe.save_pretrained(tmp)
    return Path(out)


@torch.no_grad()
def _spread(unet, seed: int) -> None:
    """Randomize the zero-initialized tensors too (diffusers zeroes conv_out, proj_out, ...), so that
    every UNet tensor differs between seeds and the output depends on every block."""
    g = torch.Generator().manual_seed(seed)
    for p in unet.parameters():
        if not p.any():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_sd15_unet(out: str | Path, *, seed: int = 0) -> Path:
    """A tiny SD1.x-shaped UNet folder (4 down blocks, no add-embeddings): an unmergeable neighbour."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                cross_attention_dim=32, attention_head_dim=2)
    unet.save_pretrained(Path(out))
    return Path(out)


def export_single_file(pipeline_dir: str | Path, target: str | Path) -> Path:
    """The pipeline's UNet in the original layout (`model.diffusion_model.*`) in one .safetensors file,
    with the first text encoder beside it as SDXL checkpoints store it
    (`conditioner.embedders.0.transformer.*`, which is transformers' own layout)."""
    pipeline_dir, target = Path(pipeline_dir), Path(target)
    unet = load_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    tensors = diffusers_to_original(unet, label=str(pipeline_dir / "unet"))
    te = load_file(pipeline_dir / "text_encoder" / "model.safetensors")
    tensors.update({f"{TEXT_ENCODER_PREFIX}0.transformer.{k}": v for k, v in te.items()})
    save_file(tensors, target, metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-xl-v1-base"})
    return target
