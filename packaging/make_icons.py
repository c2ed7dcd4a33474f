"""Draws the Signal Studio icon set (resources/icons): a dark rounded square holding the world's
three kinds of things — a circle, a square and a triangle in three of its colours — at the sizes a
freedesktop icon theme, macOS and Windows ask for. The SVG beside them is the same drawing."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "resources" / "icons"
SIZES = (16, 32, 48, 64, 128, 256, 512)


def draw(size: int) -> Image.Image:
    s = size / 256  # drawn on a 256 grid
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([8 * s, 8 * s, 248 * s, 248 * s], radius=48 * s, fill=(28, 32, 48, 255))
    d.ellipse([36 * s, 40 * s, 124 * s, 128 * s], fill=(231, 76, 60, 255))
    d.rectangle([140 * s, 44 * s, 220 * s, 124 * s], fill=(52, 152, 219, 255))
    d.polygon([(128 * s, 144 * s), (204 * s, 220 * s), (52 * s, 220 * s)], fill=(46, 204, 113, 255))
    return img


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        draw(size).save(OUT / f"signal-studio-{size}.png")
    draw(256).save(OUT / "signal-studio.ico", sizes=[(n, n) for n in (16, 32, 48, 64, 128, 256)])
    (OUT / "signal-studio.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 256 256">\n'
        '  <rect x="8" y="8" width="240" height="240" rx="48" fill="#1c2030"/>\n'
        '  <circle cx="80" cy="84" r="44" fill="#e74c3c"/>\n'
        '  <rect x="140" y="44" width="80" height="80" fill="#3498db"/>\n'
        '  <polygon points="128,144 204,220 52,220" fill="#2ecc71"/>\n'
        "</svg>\n")


if __name__ == "__main__":
    main()
