"""Batched data augmentation on tensors, on whatever device the batch lives.

Every op has a probability ``p`` (0 = off) applied per image, and its own magnitude. Images are
float (N, C, H, W) in [0, 1]. Rotation and cropping are both affine maps, so they are composed
into one ``grid_sample`` call per batch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from trainables.options import Strict

P = "probability that an image gets this op (0 = off)"


class Rotate(Strict):
    p: float = Field(0.0, ge=0, le=1, description=P)
    degrees: float = Field(15.0, gt=0, le=180, description="largest rotation either way (degrees)")


class Flip(Strict):
    """Horizontal mirror. Harmful on digits (a mirrored 3 is not a 3): a trick to test, not a default."""

    p: float = Field(0.0, ge=0, le=1, description=P)


class Crop(Strict):
    p: float = Field(0.0, ge=0, le=1, description=P)
    mode: Literal["pad", "resized"] = Field("pad", description="pad: shift by up to `padding` px; resized: zoom in")
    padding: int = Field(1, ge=1, le=16, description="largest shift in pixels (pad mode)")
    scale: float = Field(0.75, gt=0, le=1, description="smallest kept area fraction (resized mode)")


class Noise(Strict):
    p: float = Field(0.0, ge=0, le=1, description=P)
    std: float = Field(0.05, gt=0, le=1, description="standard deviation of added Gaussian noise (pixel units)")


class Color(Strict):
    p: float = Field(0.0, ge=0, le=1, description=P)
    brightness: float = Field(0.1, ge=0, le=1, description="largest brightness shift either way (pixel units)")
    hue: float = Field(0.0, ge=0, le=180, description="largest hue rotation either way (degrees; RGB only)")


class Contrast(Strict):
    p: float = Field(0.0, ge=0, le=1, description=P)
    strength: float = Field(0.3, gt=0, lt=1, description="contrast factor drawn from [1-strength, 1+strength]")


class Augment(Strict):
    """Every op, off by default. Adding an op is one field here and its arithmetic in ``apply``;
    the contract tests over ``AUGMENTATIONS`` fail until ``apply`` uses it."""

    rotate: Rotate = Rotate()
    flip: Flip = Flip()
    crop: Crop = Crop()
    noise: Noise = Noise()
    color: Color = Color()
    contrast: Contrast = Contrast()

    @property
    def active(self) -> bool:
        return any(getattr(self, name).p > 0 for name in AUGMENTATIONS)


# The option table is derived from Augment's fields: one list of ops, never two to keep in step.
AUGMENTATIONS: dict[str, type[Strict]] = {name: info.annotation for name, info in Augment.model_fields.items()}


def apply(x, aug: Augment, gen):
    """Return an augmented copy of ``x``; ``gen`` is a torch.Generator on ``x``'s device."""
    import torch

    if not aug.active:
        return x
    n, c, h, w = x.shape

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen, device=x.device)

    def chosen(p):
        return torch.rand(n, generator=gen, device=x.device) < p

    def per_image(mask):
        return mask.view(n, 1, 1, 1)

    if aug.rotate.p > 0 or aug.crop.p > 0:
        x = _affine(x, aug, uniform, chosen, gen)
    if aug.flip.p > 0:
        x = torch.where(per_image(chosen(aug.flip.p)), x.flip(-1), x)
    if aug.color.p > 0:
        on = chosen(aug.color.p)
        shift = uniform(-aug.color.brightness, aug.color.brightness) * on
        x = x + shift.view(n, 1, 1, 1)
        if c == 3 and aug.color.hue > 0:
            x = torch.where(per_image(on), _rotate_hue(x, uniform(-aug.color.hue, aug.color.hue)), x)
    if aug.contrast.p > 0:
        factor = torch.where(chosen(aug.contrast.p), uniform(1 - aug.contrast.strength, 1 + aug.contrast.strength), 1.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor.view(n, 1, 1, 1) + mean
    if aug.noise.p > 0:
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * aug.noise.std
        x = x + noise * per_image(chosen(aug.noise.p))
    return x.clamp(0.0, 1.0)


def _affine(x, aug: Augment, uniform, chosen, gen):
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    theta = torch.eye(3, device=x.device, dtype=x.dtype).repeat(n, 1, 1)
    if aug.rotate.p > 0:
        angle = uniform(-aug.rotate.degrees, aug.rotate.degrees) * chosen(aug.rotate.p) * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = theta.clone()
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
        theta = theta @ rot
    if aug.crop.p > 0:
        on = chosen(aug.crop.p)
        crop = torch.eye(3, device=x.device, dtype=x.dtype).repeat(n, 1, 1)
        if aug.crop.mode == "resized":
            # theta maps output to input coordinates: a side s < 1 reads a smaller window (zoom in).
            side = torch.where(on, uniform(math.sqrt(aug.crop.scale), 1.0), 1.0)
            crop[:, 0, 0], crop[:, 1, 1] = side, side
            crop[:, 0, 2], crop[:, 1, 2] = uniform(-1, 1) * (1 - side), uniform(-1, 1) * (1 - side)
        else:
            # Whole-pixel shifts land on pixel centres, so bilinear sampling copies pixels exactly.
            pad = aug.crop.padding
            shift = torch.randint(-pad, pad + 1, (2, n), generator=gen, device=x.device).to(x.dtype) * on
            crop[:, 0, 2], crop[:, 1, 2] = shift[0] * 2 / w, shift[1] * 2 / h
        theta = theta @ crop
    grid = F.affine_grid(theta[:, :2], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# RGB <-> YIQ: hue is the angle in the IQ plane.
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _rotate_hue(x, degrees):
    import torch

    yiq = torch.tensor(_YIQ, device=x.device, dtype=x.dtype)
    rgb = torch.linalg.inv(yiq)
    a = degrees * (math.pi / 180)
    rot = torch.zeros(len(a), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)
    m = rgb @ rot @ yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)
