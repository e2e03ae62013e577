"""Can the antialiased resize be reproduced with elementwise tensor ops, bit for bit? (issue 14)

An exact device path for photos would need the CPU kernel's arithmetic reproduced with ops that
round the same on every device. This emulates the horizontal pass of PyTorch's CPU kernel
(F.interpolate(..., antialias=True) on float pixels: per-output weights from the filter,
normalised by their sum, accumulated tap by tap in f32) in numpy, with and without fused
multiply-add, and prints how many output values equal PyTorch's.

usage: python3 benches/aa_emulation.py      (CPU only; PyTorch and numpy)
"""
import numpy as np
import torch
import torch.nn.functional as F

f32 = np.float32


def fma32(a, b, c):
    return f32(np.float64(a) * np.float64(b) + np.float64(c))


def bilinear(x, fma):
    x = abs(x)
    return f32(1) - x if x < 1 else f32(0)


def bicubic(x, fma, a=f32(-0.5)):
    # PyTorch's cubic_convolution1/2, a = -0.5 as PIL; `fma` contracts the polynomials.
    x = abs(x)
    if x < 1:
        return fma32(fma32(a + f32(2), x, -(a + f32(3))) * x, x, f32(1)) if fma else ((a + f32(2)) * x - (a + f32(3))) * x * x + f32(1)
    if x < 2:
        return fma32(fma32(fma32(a, x, -f32(5) * a), x, f32(8) * a), x, -f32(4) * a) if fma else ((a * x - f32(5) * a) * x + f32(8) * a) * x - f32(4) * a
    return f32(0)


def weights(insz, outsz, filt, taps, fma):
    scale = f32(insz) / f32(outsz)
    support = f32(taps * 0.5) * scale if scale >= 1 else f32(taps * 0.5)
    invscale = f32(1) / scale if scale >= 1 else f32(1)
    out = []
    for i in range(outsz):
        center = scale * (f32(i) + f32(0.5))
        xmin = max(int(center - support + f32(0.5)), 0)
        xmax = min(int(center + support + f32(0.5)), insz)
        ws = [filt((f32(j + xmin) - center + f32(0.5)) * invscale, fma) for j in range(xmax - xmin)]
        total = f32(0)
        for w in ws:
            total = f32(total + w)
        out.append((xmin, [f32(w / total) if total != 0 else w for w in ws]))
    return out


def horizontal(x, outw, filt, taps, fma_weights, fma_sum):
    xs = x.numpy().astype(np.float32)
    res = np.zeros(x.shape[:-1] + (outw,), np.float32)
    for o, (xmin, ws) in enumerate(weights(x.shape[-1], outw, filt, taps, fma_weights)):
        acc = xs[..., xmin] * ws[0]
        for j in range(1, len(ws)):
            tap = xs[..., xmin + j]
            acc = (acc.astype(np.float64) + tap.astype(np.float64) * np.float64(ws[j])).astype(np.float32) if fma_sum else (acc + tap * ws[j]).astype(np.float32)
        res[..., o] = acc
    return torch.from_numpy(res)


g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (1, 3, 40, 451), generator=g).float()
print(f"PyTorch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}; 451 -> 256 columns, 3x40 rows")
for mode, filt, taps in [("bilinear", bilinear, 2), ("bicubic", bicubic, 4)]:
    ref = F.interpolate(x, size=(40, 256), mode=mode, antialias=True, align_corners=False)
    for fma_weights in (False, True):
        for fma_sum in (False, True):
            em = horizontal(x, 256, filt, taps, fma_weights, fma_sum)
            print(f"{mode}: weights {'with' if fma_weights else 'without'} FMA, sum {'with' if fma_sum else 'without'} FMA: "
                  f"{(ref == em).float().mean().item():.2%} of values equal, max |difference| {(ref - em).abs().max().item():.3g}")
