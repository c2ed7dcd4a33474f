"""Decode one user file completely and normalise it to 8-bit RGB, or say exactly why not.

Every file is decoded in full (``Image.load``), so a truncated file fails here and not in
the middle of a training run. Normalisations are recorded, never silent:
CMYK -> RGB, 16-bit -> 8-bit (scaled), palette -> RGB(A), EXIF orientation applied,
alpha composited over white (a transparent background becomes white, as most viewers show it).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

KEEP_AS_IS = {"PNG", "JPEG", "WEBP"}


class Rejected(Exception):
    """The file cannot enter the dataset; ``reason`` is a short code, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    data: bytes  # bytes to store (original when nothing changed)
    ext: str
    width: int
    height: int
    mode: str  # mode of the source file
    normalised: list[str] = field(default_factory=list)
    thumb: bytes = b""
    phash: str = ""  # 256-bit perceptual hash (hex) for near-duplicate search
    blur: float = 0.0  # variance of the Laplacian of the grey image: low = blurry


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "CMYK":
        notes.append("cmyk_to_rgb")
        return im.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        notes.append("16bit_to_8bit")
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        notes.append("float_to_8bit")
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        notes.append("palette_to_rgb")
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        return _to_rgb(im, notes) if im.mode != "RGB" else im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha_over_white")
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("L", "1"):
        notes.append("grey_to_rgb")
        return im.convert("RGB")
    if mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        notes.append(f"{mode.lower()}_to_rgb")
        return im.convert("RGB")
    raise Rejected("unsupported_mode", f"image mode {mode} cannot be converted safely")


def decode_file(path: Path, *, max_pixels: int = 64_000_000, min_side: int = 8, thumb_side: int = 96) -> Decoded:
    """Read, fully decode and normalise ``path``; raises :class:`Rejected` with the reason."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Rejected("unreadable", exc.strerror or str(exc)) from None
    if not raw:
        raise Rejected("empty_file", "zero bytes")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                fmt = im.format or ""
                w, h = im.size
                if w * h > max_pixels:
                    raise Rejected("too_many_pixels", f"{w}x{h} exceeds the limit of {max_pixels} pixels")
                im.load()
                src_mode = im.mode
                notes: list[str] = []
                if _has_rotation(im):
                    notes.append("exif_rotated")
                    im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im, notes)
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise _diagnose(raw) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejected("corrupt", f"decoding failed: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if min(rgb.size) < min_side:
        raise Rejected("too_small", f"{rgb.size[0]}x{rgb.size[1]} has a side under {min_side} px")
    if notes or fmt not in KEEP_AS_IS:
        if not notes:
            notes.append(f"{fmt.lower() or 'unknown'}_to_png")
        buf = io.BytesIO()
        rgb.save(buf, "PNG")
        data, ext = buf.getvalue(), "png"
    else:
        data, ext = raw, {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
    thumb = rgb.copy()
    thumb.thumbnail((thumb_side, thumb_side), Image.BILINEAR)
    tbuf = io.BytesIO()
    thumb.save(tbuf, "PNG")
    return Decoded(data, ext, rgb.size[0], rgb.size[1], src_mode, notes, tbuf.getvalue(), perceptual_hash(rgb), blur_score(rgb))


def perceptual_hash(img: Image.Image) -> str:
    """imagehash's DCT hash at 16x16 (256 bits) plus the mean colour: ``<64 hex>/<rrggbb>``.

    The DCT hash sees structure in grey (re-encodes land within ~12 bits, distinct ShapesWorld
    scenes 38+ apart) but is blind to colour, so two flat images of different colours would hash
    alike; the mean colour tells them apart.
    """
    import imagehash

    r, g, b = (int(round(v)) for v in np.asarray(img.convert("RGB").resize((8, 8), Image.BOX), dtype=np.float32).reshape(-1, 3).mean(0))
    return f"{imagehash.phash(img, hash_size=16)}/{r:02x}{g:02x}{b:02x}"


def blur_score(img: Image.Image) -> float:
    """Variance of the Laplacian of the grey image at <=256 px (the usual sharpness proxy)."""
    grey = img.convert("L")
    if max(grey.size) > 256:
        grey.thumbnail((256, 256))
    a = np.asarray(grey, dtype=np.float32)
    if min(a.shape) < 3:
        return 0.0
    lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1]
    return float(lap.var())


_SIGNATURES = {
    b"\x89PNG": ("PngImagePlugin", "PngImageFile"),
    b"II*\x00": ("TiffImagePlugin", "TiffImageFile"),
    b"MM\x00*": ("TiffImagePlugin", "TiffImageFile"),
    b"\xff\xd8\xff": ("JpegImagePlugin", "JpegImageFile"),
    b"GIF8": ("GifImagePlugin", "GifImageFile"),
    b"BM": ("BmpImagePlugin", "BmpImageFile"),
}


def _diagnose(raw: bytes) -> Rejected:
    """Pillow could not identify the file: an image format with a pixel mode Pillow cannot read,
    a damaged header, or no image at all. Ask the format's own plugin why."""
    import importlib

    for magic, (module, cls) in _SIGNATURES.items():
        if raw.startswith(magic):
            plugin = getattr(importlib.import_module(f"PIL.{module}"), cls)
            try:
                plugin(io.BytesIO(raw))
            except Exception as exc:  # the plugin's own reason
                reason = "unsupported_mode" if "mode" in str(exc).lower() else "corrupt"
                return Rejected(reason, f"{module[:-11]} file: {exc}")
            return Rejected("corrupt", f"{module[:-11]} header present but the file cannot be read")
    return Rejected("not_an_image", "no known image format")


def _has_rotation(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:
        return False


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
