"""Batched data augmentation on tensors, on whatever device the batch lives.

Every op has a probability ``p`` (0 = off) applied per image, and its own magnitude. Images are
float (N, C, H, W) in [0, 1]. Each op costs what its arithmetic needs: rotation (and a zooming
crop) resample, composed with any crop into one ``grid_sample`` call per batch; a pad-and-crop shift
alone is a gather of whole pixels; flip, brightness, contrast and noise are elementwise, in place.
"""

from __future__ import annotations

import functools
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
    """Return an augmented copy of ``x``; ``gen`` is a torch.Generator on ``x``'s device.

    Random numbers are drawn in a fixed order (op by op, as listed in ``Augment``), so a seed gives
    the same batch whichever way an op's arithmetic is done. The first op writes a new tensor, every
    later one works in place on it."""
    import torch

    if not aug.active:
        return x
    n, c, h, w = x.shape

    def uniform(lo, hi):
        return torch.rand(n, generator=gen, device=x.device).mul_(hi - lo).add_(lo)

    def chosen(p):
        return torch.rand(n, generator=gen, device=x.device) < p

    def per_image(values):
        return values.view(n, 1, 1, 1)

    owned = False  # whether x is already a tensor of our own (in-place ops are safe)
    if aug.rotate.p > 0 or (aug.crop.p > 0 and aug.crop.mode == "resized"):
        x, owned = _affine(x, aug, uniform, chosen, gen), True
    elif aug.crop.p > 0:
        # A whole-pixel shift is a copy, not a resampling: one gather from the zero-padded batch.
        x, owned = _shift(x, aug.crop.padding, chosen(aug.crop.p), gen), True
    if aug.flip.p > 0:
        x, owned = torch.where(per_image(chosen(aug.flip.p)), x.flip(-1), x), True
    if aug.color.p > 0:
        on = chosen(aug.color.p)
        shift = per_image(uniform(-aug.color.brightness, aug.color.brightness) * on)
        x, owned = (x.add_(shift) if owned else x + shift), True
        if c == 3 and aug.color.hue > 0:
            x = torch.where(per_image(on), _rotate_hue(x, uniform(-aug.color.hue, aug.color.hue)), x)
    if aug.contrast.p > 0:
        factor = torch.where(chosen(aug.contrast.p), uniform(1 - aug.contrast.strength, 1 + aug.contrast.strength), 1.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x, owned = (x.sub_(mean) if owned else x - mean).mul_(per_image(factor)).add_(mean), True
    if aug.noise.p > 0:
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype).mul_(aug.noise.std)
        noise.mul_(per_image(chosen(aug.noise.p)))
        x = x.add_(noise) if owned else x + noise
    return x.clamp_(0.0, 1.0)


def _shift(x, pad: int, on, gen):
    """Each chosen image moved by up to ``pad`` whole pixels either way, the uncovered border zero:
    ``out[i, j] = x[i + dy, j + dx]``."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    shift = torch.randint(-pad, pad + 1, (2, n), generator=gen, device=x.device) * on  # (dx, dy) per image
    padded_width = w + 2 * pad
    offset = shift[1] * padded_width + shift[0]
    index = (_padded_index(h, w, pad, x.device) + offset.view(n, 1)).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded.view(n, c, -1).gather(2, index).view(n, c, h, w)


@functools.cache
def _padded_index(h: int, w: int, pad: int, device):
    """Flat positions of an unshifted (h, w) image inside its ``pad``-wide zero frame."""
    import torch

    rows = torch.arange(pad, pad + h, device=device).view(h, 1)
    cols = torch.arange(pad, pad + w, device=device).view(1, w)
    return (rows * (w + 2 * pad) + cols).view(1, h * w)


def _affine(x, aug: Augment, uniform, chosen, gen):
    """Rotation and a crop, composed into one map from output to input coordinates, then one
    bilinear resampling for the batch."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    zero = torch.zeros(n, device=x.device, dtype=x.dtype)
    one = torch.ones(n, device=x.device, dtype=x.dtype)
    theta = None
    if aug.rotate.p > 0:
        angle = uniform(-aug.rotate.degrees, aug.rotate.degrees) * chosen(aug.rotate.p) * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack((cos, -sin, zero, sin, cos, zero, zero, zero, one), 1).view(n, 3, 3)
    if aug.crop.p > 0:
        on = chosen(aug.crop.p)
        if aug.crop.mode == "resized":
            # A side s < 1 reads a smaller window (zoom in).
            side = torch.where(on, uniform(math.sqrt(aug.crop.scale), 1.0), 1.0)
            tx, ty = uniform(-1, 1) * (1 - side), uniform(-1, 1) * (1 - side)
        else:
            # Whole-pixel shifts land on pixel centres, so bilinear sampling copies pixels exactly.
            pad = aug.crop.padding
            shift = torch.randint(-pad, pad + 1, (2, n), generator=gen, device=x.device).to(x.dtype) * on
            side, tx, ty = one, shift[0] * 2 / w, shift[1] * 2 / h
        crop = torch.stack((side, zero, tx, zero, side, ty, zero, zero, one), 1).view(n, 3, 3)
        theta = crop if theta is None else theta @ crop
    # F.affine_grid rebuilds the identity grid on every call; it is the same for every batch.
    grid = _identity_grid(h, w, x.dtype, x.device).expand(n, h * w, 3).bmm(theta[:, :2].transpose(1, 2))
    return F.grid_sample(x, grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.cache
def _identity_grid(h: int, w: int, dtype, device):
    """(1, h*w, 3): each output pixel's (x, y, 1), as ``F.affine_grid`` builds it (align_corners=False)."""
    import torch

    def centres(steps: int):
        if steps <= 1:
            return torch.zeros((), dtype=dtype, device=device)
        return torch.linspace(-1, 1, steps, dtype=dtype, device=device) * (steps - 1) / steps

    grid = torch.empty(1, h, w, 3, dtype=dtype, device=device)
    grid[..., 0] = centres(w)
    grid[..., 1] = centres(h).unsqueeze(-1)
    grid[..., 2] = 1
    return grid.view(1, h * w, 3)


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
