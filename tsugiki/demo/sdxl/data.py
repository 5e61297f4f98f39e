"""The SDXL stage's world and its training: drawn images, prompt splits, and the small models trained
on them (the tiny VAE, two UNets on different data, the judge that scores images).

Images are 16 x 16 RGB drawings (Pillow, 4x supersampled) of one shape from :mod:`tsugiki.demo.world`
in one colour on a grey background, jittered in size and position; the prompt is
``"a <colour> <shape>"``. The 18 (colour, shape) prompts split in two disjoint halves by
``(colour + shape) % 2``: the *fitness* split the merge search scores, and the *held-out* split the
report's numbers come from. Each half holds every colour and every shape.

What is trained, in order, each deterministic by seed with one thread:

1. the tiny VAE (:func:`train_vae`), on drawings of all 18 prompts: a random VAE decodes any
   latent into noise, so without it no UNet could draw anything a metric could see. Its
   ``scaling_factor`` is set to 1 / std of the training latents, as SDXL's was. It is then fixed,
   like the text encoders.
2. the base UNet (:func:`finetune_unet` on all 18 prompts), then two copies of it, each fine-tuned
   on the 9 prompts of its own palette (:data:`PALETTES`: red/blue/white vs black/brown/gold) — two
   UNets trained on different data from one pretrained model, as EvoSDXL-JP's sources were. The loss
   is the standard denoising loss with v-prediction (Salimans & Ho 2022; from scratch, an
   eps-prediction UNet is still noise after the few hundred steps a CPU affords, a v-prediction one
   draws coloured shapes), at the timesteps the 4-step sampler visits (as few-step models such as
   SDXL-Lightning are trained for their steps). Text encoders, VAE and scheduler are not trained.
3. the judge (:func:`train_judge`): a tiny CLIP trained contrastively on drawings of all 18 prompts
   (never on generated images). It stands in for FID's Inception and HPSv2's CLIP, which cannot be
   loaded offline, and reads images as CLIP's zero-shot classification does (:func:`judge_read`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tsugiki.demo.training import train_steps
from tsugiki.demo.world import COLOURS, SHAPES

IMAGE_SIZE = 16  # pixels; the tiny SDXL's latents are 8 x 8 x 4
BACKGROUND = (128, 128, 128)
SUPERSAMPLE = 4
PALETTES = {"a": tuple(c[0] for c in COLOURS[:3]), "b": tuple(c[0] for c in COLOURS[3:])}
SPLITS = ("fitness", "heldout")
PREDICTION_TYPE = "v_prediction"
PROMPT_TOKENS = 32  # prompts are <= 20 tokens; 77 would only make cross-attention slower
TIME_IDS = (IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE)  # SDXL micro-conditioning, as the pipeline sets it


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    rgb: tuple[int, int, int]

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape}"

    @property
    def split(self) -> str:
        ci = [c[0] for c in COLOURS].index(self.colour)
        si = [s[0] for s in SHAPES].index(self.shape)
        return SPLITS[(ci + si) % 2]


def world_items() -> list[Item]:
    """The 18 (colour, shape) items, colours outer."""
    return [Item(name, shape, rgb) for name, _, rgb in COLOURS for shape, _ in SHAPES]


def items_of(*, split: str | None = None, palette: str | None = None) -> list[Item]:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [i for i in world_items() if (split is None or i.split == split)
            and (palette is None or i.colour in PALETTES[palette])]


def draw(item: Item, rng: random.Random):
    """One 16 x 16 drawing of ``item``: radius 4.5-6 px, centre jittered by up to 1.5 px."""
    from PIL import Image, ImageDraw

    u = SUPERSAMPLE
    im = Image.new("RGB", (IMAGE_SIZE * u, IMAGE_SIZE * u), BACKGROUND)
    d = ImageDraw.Draw(im)
    r = rng.uniform(5.5, 7.0) * u
    cx, cy = ((IMAGE_SIZE / 2 + rng.uniform(-1.0, 1.0)) * u for _ in range(2))
    if item.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=item.rgb)
    elif item.shape == "square":
        s = 0.85 * r
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=item.rgb)
    else:
        d.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)], fill=item.rgb)
    return im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def draw_many(items: Sequence[Item], per_item: int, seed: int) -> list:
    """``per_item`` drawings of every item, item order repeated ``per_item`` times (index k*len+i)."""
    rng = random.Random(seed)
    return [draw(item, rng) for _ in range(per_item) for item in items]


def to_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images -> (N, 3, H, W) float32 in [-1, 1], the VAE's input range."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------- VAE
def train_vae(vae, *, steps: int, seed: int, batch: int = 16, lr: float = 3e-3, progress: bool = False) -> float:
    """Fit the tiny AutoencoderKL to drawings of all 18 items (L2 reconstruction + 1e-6 KL, as SD's
    VAE objective without the GAN/LPIPS terms) and set its scaling factor; returns the last loss."""
    torch.manual_seed(seed)
    images = to_tensor(draw_many(world_items(), 20, seed))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr)

    def loss_at(step: int) -> torch.Tensor:
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        return torch.nn.functional.mse_loss(rec, x) + 1e-6 * post.kl().mean()

    vae.train()
    losses = train_steps(loss_at, opt, steps=steps, desc="training VAE", progress=progress)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return losses[-1] if losses else float("nan")


# ---------------------------------------------------------------------------------------- UNet
@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own conditioning: (prompt_embeds, pooled_prompt_embeds) without guidance."""
    embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return embeds.detach(), pooled.detach()


def finetune_unet(pipe, items: Sequence[Item], *, steps: int, seed: int, per_item: int = 2, lr: float = 3e-3,
                  timesteps: Sequence[int] | None = None, progress: bool = False,
                  desc: str = "training UNet") -> list[float]:
    """Train ``pipe.unet`` in place with the denoising loss on fresh drawings of ``items`` each step
    (VAE latents, DDPM noising with the pipeline scheduler's betas and prediction type); text
    encoders and VAE stay fixed. Returns the loss per step."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    noiser = DDPMScheduler.from_config(pipe.scheduler.config)
    embeds, pooled = encode_prompts(pipe, [i.prompt for i in items])
    embeds, pooled = embeds.repeat(per_item, 1, 1), pooled.repeat(per_item, 1)
    n = len(items) * per_item
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(n, 1)
    vae, unet = pipe.vae, pipe.unet
    sf = vae.config.scaling_factor
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr, weight_decay=0.0)

    def loss_at(step: int) -> torch.Tensor:
        with torch.no_grad():
            x = to_tensor([draw(item, rng) for _ in range(per_item) for item in items])
            latents = vae.encode(x).latent_dist.sample(generator=g) * sf
        noise = torch.randn(latents.shape, generator=g)
        if timesteps is None:
            t = torch.randint(0, noiser.config.num_train_timesteps, (n,), generator=g)
        else:  # only the timesteps the few-step sampler visits
            t = torch.tensor(list(timesteps))[torch.randint(0, len(timesteps), (n,), generator=g)]
        noisy = noiser.add_noise(latents, noise, t)
        v_pred = noiser.config.prediction_type == "v_prediction"
        target = noiser.get_velocity(latents, noise, t) if v_pred else noise
        pred = unet(noisy, t, encoder_hidden_states=embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        return torch.nn.functional.mse_loss(pred, target)

    unet.train()
    losses = train_steps(loss_at, opt, steps=steps, desc=desc, progress=progress)
    unet.eval()
    return losses


# ---------------------------------------------------------------------------------------- judge
def build_judge(tokenizer, seed: int, patch_size: int = 4):
    """A tiny CLIPModel (ViT 4x4 patches on 16 px, 2 layers, width 32; text 2 layers, 32 positions)."""
    from transformers import CLIPConfig, CLIPModel

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    width = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=PROMPT_TOKENS, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos, **width)
    vision = dict(image_size=IMAGE_SIZE, patch_size=patch_size, **width)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))


def train_judge(model, tokenizer, *, steps: int, seed: int, per_item: int = 2, lr: float = 3e-3,
                progress: bool = False) -> float:
    """CLIP's contrastive objective, image side: each step, ``per_item`` fresh drawings of every one of
    the 18 items are classified against the 18 prompts by scaled cosine (cross-entropy). Images go
    through HPSv2's own preprocessing (:func:`tsugiki.benchmarks.hps.preprocess_images`)."""
    from tsugiki.benchmarks.hps import preprocess_images

    items = world_items()
    ids = tokenizer([i.prompt for i in items], padding="max_length", max_length=PROMPT_TOKENS, truncation=True,
                    return_tensors="pt")["input_ids"]
    target = torch.arange(len(items)).repeat(per_item)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)

    def loss_at(step: int) -> torch.Tensor:
        pixels = preprocess_images([draw(i, rng) for _ in range(per_item) for i in items], IMAGE_SIZE)
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        return torch.nn.functional.cross_entropy(model.logit_scale.exp() * img @ txt.T, target)

    model.train()
    losses = train_steps(loss_at, opt, steps=steps, desc="training judge", progress=progress)
    model.eval().requires_grad_(False)
    return losses[-1] if losses else float("nan")


@torch.no_grad()
def judge_image_features(model, images: Sequence, batch_size: int = 64) -> np.ndarray:
    """(N, 32) float64 projected image embeddings: the features FID is computed on here."""
    from tsugiki.benchmarks.hps import preprocess_images

    out = [model.get_image_features(pixel_values=preprocess_images(images[i:i + batch_size], IMAGE_SIZE)).pooler_output
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


@torch.no_grad()
def judge_text_features(model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    ids = tokenizer(list(prompts), padding="max_length", max_length=PROMPT_TOKENS, truncation=True,
                    return_tensors="pt")["input_ids"]
    return model.get_text_features(input_ids=ids).pooler_output


@dataclass(frozen=True)
class JudgeReading:
    """The judge's reading of each image against all 18 prompts: its top prompt, and the probability
    (softmax of the judge's scaled cosines, as in CLIP's zero-shot classification) of the image's own prompt."""

    top: list[str]
    prob: list[float]

    def hits(self, prompts: Sequence[str]) -> list[float]:
        return [1.0 if t == p else 0.0 for t, p in zip(self.top, prompts)]


@torch.no_grad()
def judge_read(model, tokenizer, images: Sequence, prompts: Sequence[str]) -> JudgeReading:
    """Score every image against every world prompt with HPSv2's 100 x cosine
    (:func:`tsugiki.benchmarks.hps.hps_from_features`)."""
    from tsugiki.benchmarks.hps import hps_from_features

    every = [i.prompt for i in world_items()]
    unknown = sorted(set(prompts) - set(every))
    if unknown:
        raise ValueError(f"prompt {unknown[0]!r} is not one of the world's 18 prompts")
    text = judge_text_features(model, tokenizer, every).double()
    img = torch.from_numpy(judge_image_features(model, images))
    cosine = torch.stack([hps_from_features(img, t.expand_as(img)) for t in text], dim=1) / 100.0
    prob = torch.softmax(model.logit_scale.exp().double() * cosine, dim=1)
    own = torch.tensor([every.index(p) for p in prompts])
    return JudgeReading([every[k] for k in cosine.argmax(dim=1).tolist()],
                        prob[torch.arange(len(prompts)), own].tolist())


def judge_accuracy(model, tokenizer, images: Sequence, prompts: Sequence[str]) -> list[float]:
    """Per image 1.0 when the judge ranks its own prompt first among all 18 prompts, else 0.0."""
    return judge_read(model, tokenizer, images, prompts).hits(prompts)
