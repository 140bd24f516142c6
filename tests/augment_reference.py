"""The augmentation ops as they were before each op got its own arithmetic (trainables/augment.py at
commit 5596e13): the reference that tests/test_augment.py holds the rewrite to, batch for batch."""

from __future__ import annotations

import math

from trainables.augment import Augment, _rotate_hue


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
