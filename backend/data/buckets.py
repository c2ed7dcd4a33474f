"""Aspect-ratio buckets: each item trains at the bucket whose aspect is closest to its own and,
among buckets of that aspect, whose size is closest to its own (a 48 px image trains at 64 px,
not blown up to 128 px, when both buckets exist).

An item is eligible for a bucket list only if reaching the bucket's aspect crops at most
``max_crop`` of a side; cropping more would cut out objects its caption promises.
"""

from __future__ import annotations

import math

from PIL import Image


def crop_fraction(w: int, h: int, bw: int, bh: int) -> float:
    """Fraction of one side lost when an image w x h is resized to cover bw x bh and centre-cropped."""
    a, b = w / h, bw / bh
    return 1 - min(a, b) / max(a, b)


def assign_bucket(w: int, h: int, buckets: list[tuple[int, int]], max_crop: float = 0.13) -> tuple[int, int] | None:
    def distance(b: tuple[int, int]) -> tuple[float, float, int]:
        aspect = round(abs(math.log((w / h) / (b[0] / b[1]))), 9)
        size = abs(math.log((w * h) / (b[0] * b[1])))
        return aspect, size, -b[0] * b[1]  # equal size distance: the larger bucket (downscale, not upscale)

    best = min(buckets, key=distance)
    return best if crop_fraction(w, h, *best) <= max_crop + 1e-9 else None


def upscale_factor(w: int, h: int, bucket: tuple[int, int]) -> float:
    """How much an image w x h is enlarged to cover the bucket (below 1: it is shrunk)."""
    return max(bucket[0] / w, bucket[1] / h)


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover the bucket, then centre-crop to it."""
    bw, bh = bucket
    w, h = img.size
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC if scale > 1 else Image.BOX)
    left, top = (nw - bw) // 2, (nh - bh) // 2
    return img.crop((left, top, left + bw, top + bh))
