"""The plain PyTorch reference for benches/extract.sh: the same model and weights (timm), the
same pictures and preprocessing (CIFAR-10 records, bilinear F.interpolate to the input size,
mean/std), eval mode, torch.inference_mode(), features written as safetensors.

usage: reference.py TIMM_NAME WEIGHTS RECORDS.bin INPUT_SIZE MEAN STD MODE OUT [BATCH]
MODE: fp32-nchw | fp32-cl | bf16-nchw | bf16-cl  (bf16: model and input cast to bfloat16)
Prints one line: "<images> images in <seconds>s; batch loop <rate> images/s" (the driver times
the whole process; the loop rate, without start-up, is what it picks the best MODE by).
"""
import sys
import time

t0 = time.time()
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

name, weights, records, size, mean, std, mode, out = sys.argv[1:9]
batch = int(sys.argv[9]) if len(sys.argv) > 9 else 32
size = int(size)
mean_t = torch.tensor([float(m) for m in mean.split(",")]).view(1, 3, 1, 1)
std_t = torch.tensor([float(s) for s in std.split(",")]).view(1, 3, 1, 1)
dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
channels_last = mode.endswith("-cl")

if name.startswith("vit_"):
    # A Vision Transformer loads as a user's checkpoint does: timm's filter resamples the
    # position embeddings to the input size.
    model = timm.create_model(name, pretrained=True, num_classes=0, img_size=size, pretrained_cfg_overlay=dict(file=weights))
else:
    model = timm.create_model(name, pretrained=False, num_classes=0)
    model.load_state_dict(load_file(weights), strict=False)
model = model.eval().to(dtype)
if channels_last:
    model = model.to(memory_format=torch.channels_last)

raw = np.fromfile(records, dtype=np.uint8).reshape(-1, 3073)
labels = torch.from_numpy(raw[:, 0].astype(np.int64))
pixels = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy())

feats = []
t_loop = time.time()
with torch.inference_mode():
    for i in range(0, len(pixels), batch):
        x = pixels[i:i + batch].float() / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = ((x - mean_t) / std_t).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(model(x).float())
loop = time.time() - t_loop
save_file({"features": torch.cat(feats).contiguous(), "labels": labels}, out)
print(f"{len(pixels)} images in {time.time() - t0:.1f}s; batch loop {len(pixels) / loop:.2f} images/s")
