"""Writes the pictures of tests/photos.rs from a photograph, as phones, cameras and other
programs save them, with what Pillow (and so a photo viewer) shows for each as a PNG beside it.

    python make_photos.py SOURCE.png OUT_DIR

- Orientation: for each EXIF Orientation value 1-8, the pixels a camera stores for the upright
  photo (the inverse of the transform the tag asks for), saved as `o{v}.jpg` and `o{v}.png`
  (and `o6.webp`) with the tag, and as `raw{v}.jpg` / `raw{v}.png` (`raw6.webp`) without it. `o{v}.jpg.ref.png` is what
  Pillow's `ImageOps.exif_transpose` shows for `o{v}.jpg`; for the PNGs (lossless) that is
  `upright.png` itself.
- Formats: `f.<ext>` of the upright photo in each format, and `f.<ext>.ref.png`, Pillow's own
  decoding of that file (composited on white where it has alpha).

Prints one line of JSON: the files written, with each one's reference.
"""
import json
import os
import sys

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

pillow_heif.register_heif_opener()

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
upright = Image.open(src).convert("RGB")
upright.save(f"{out}/upright.png")
pairs = {}

# Pillow's exif_transpose applies, for each value: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180,
# 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90. The stored pixels
# are the inverse of that: 6 and 8 swap, the others are their own inverse.
T = Image.Transpose
STORED = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}
for v in range(1, 9):
    stored = upright.transpose(STORED[v]) if v in STORED else upright.copy()
    exif = Image.Exif()
    exif[0x0112] = v
    stored.save(f"{out}/o{v}.jpg", quality=95, subsampling=0, exif=exif.tobytes())
    stored.save(f"{out}/raw{v}.jpg", quality=95, subsampling=0)
    stored.save(f"{out}/o{v}.png", exif=exif.tobytes())
    stored.save(f"{out}/raw{v}.png")
    shown = ImageOps.exif_transpose(Image.open(f"{out}/o{v}.jpg"))
    assert shown.size == upright.size, (v, shown.size)
    shown.convert("RGB").save(f"{out}/o{v}.jpg.ref.png")
    pairs[f"o{v}.jpg"] = f"o{v}.jpg.ref.png"
    pairs[f"o{v}.png"] = "upright.png"
    if v == 6:
        # WebP carries the tag in its EXIF chunk (lossless here: the reference is the photo).
        stored.save(f"{out}/o6.webp", lossless=True, exif=exif.tobytes())
        stored.save(f"{out}/raw6.webp", lossless=True)
        pairs["o6.webp"] = "upright.png"


def shown_by_pillow(path):
    """What Pillow shows for `path`: RGB, alpha composited on white."""
    im = Image.open(path)
    im.seek(0)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


# Alpha: the photo with a transparent left third and a half-transparent middle third.
alpha = np.full((upright.height, upright.width), 255, np.uint8)
alpha[:, : upright.width // 3] = 0
alpha[:, upright.width // 3 : 2 * upright.width // 3] = 128
rgba = upright.copy()
rgba.putalpha(Image.fromarray(alpha))

formats = {
    "f.heic": lambda p: upright.save(p, quality=90),
    "f.avif": lambda p: upright.save(p, quality=90),
    "f.tiff": lambda p: upright.save(p),
    "f.bmp": lambda p: upright.save(p),
    "f.gif": lambda p: upright.save(p),
    "f.webp": lambda p: upright.save(p, quality=90),
    "f_grey.png": lambda p: upright.convert("L").save(p),
    "f_palette.png": lambda p: upright.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(p),
    "f_cmyk.jpg": lambda p: upright.convert("CMYK").save(p, quality=95),
    "f_alpha.png": lambda p: rgba.save(p),
    "f_alpha.webp": lambda p: rgba.save(p, lossless=True),
    "f_alpha.heic": lambda p: rgba.save(p, quality=90),
}
for name, save in formats.items():
    save(f"{out}/{name}")
    shown_by_pillow(f"{out}/{name}").save(f"{out}/{name}.ref.png")
    pairs[name] = f"{name}.ref.png"

print(json.dumps(pairs))
