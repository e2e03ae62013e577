"""How far preprocessing on CUDA is from preprocessing on the CPU, for benches/gpu.sh.

lastlayer's device path (src/data/on_device.rs) runs the ops of src/data/preprocess.rs on the
backbone's device. This script runs that same op sequence with this machine's PyTorch (the same
libtorch kernels lastlayer calls) on the CPU and on DEVICE, for random uint8 pictures:
- CIFAR (stretch): 256 pictures 32x32 to 224, bilinear, align_corners=False, then normalised;
- photos (shorter side to floor(224/0.875)=256, antialiased, each pass rounded to 8 bits,
  centre crop 224): bilinear (ResNets) and bicubic (EfficientNet-Lite0, Inception-v3 at 299).
Prints, per case, the largest difference of the normalised inputs and, for photos, how many
8-bit values after the resize differ (a last-bit difference in a kernel can move a value across
a rounding boundary between the two passes).

usage: gpu_preprocess.py [DEVICE]     (default cuda; `cpu` compares the CPU with itself)
"""
import math
import sys

import torch
import torch.nn.functional as F

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalize(x):
    shift = torch.tensor([m * 255 for m in MEAN], device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor([1 / (s * 255) for s in STD], device=x.device).view(1, 3, 1, 1)
    return (x - shift) * scale


def stretch(px, size):
    return normalize(F.interpolate(px.float(), size=(size, size), mode="bilinear", align_corners=False))


def resize_8bit(x, size, mode):
    h, w = x.shape[-2:]

    def one_pass(x, size):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).round().clamp(0, 255)

    if size[1] != w:
        x = one_pass(x, (h, size[1]))
    if size[0] != h:
        x = one_pass(x, size)
    return x


def photo(px, size, crop_pct, mode):
    x = px.float()
    h, w = x.shape[-2:]
    short = math.floor(size / crop_pct)
    oh, ow = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    x = resize_8bit(x, (oh, ow), mode)
    top, left = round((oh - size) / 2), round((ow - size) / 2)
    return x, normalize(x[..., top:top + size, left:left + size])


def main():
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
    g = torch.Generator().manual_seed(0)
    px = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    d = (stretch(px, 224) - stretch(px.to(device), 224).cpu()).abs().max().item()
    print(f"cifar stretch 32->224 bilinear, 256 pictures: max |difference| of normalised inputs {d:.3g}")
    # Smooth-ish photos (noise blurred by an upscale) and raw noise, several shapes.
    shapes = [(300, 451), (400, 600), (768, 1024), (451, 300), (480, 640)]
    for mode, size, crop in [("bilinear", 224, 0.875), ("bicubic", 224, 0.875), ("bicubic", 299, 0.875)]:
        worst, levels, values = 0.0, 0, 0
        for i, (h, w) in enumerate(shapes):
            base = torch.randint(0, 256, (1, 3, h // 8, w // 8), generator=g).float()
            smooth = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)
            noise = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
            for pic in (smooth, noise):
                r_cpu, n_cpu = photo(pic, size, crop, mode)
                r_dev, n_dev = photo(pic.to(device), size, crop, mode)
                worst = max(worst, (n_cpu - n_dev.cpu()).abs().max().item())
                levels += (r_cpu != r_dev.cpu()).sum().item()
                values += r_cpu.numel()
        print(f"photos {mode} to {size} ({2 * len(shapes)} pictures): max |difference| of normalised inputs {worst:.3g}; "
              f"{levels} of {values} resized 8-bit values differ ({levels / values:.2e})")


if __name__ == "__main__":
    main()
