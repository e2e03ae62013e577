"""The plain-PyTorch reference for benches/gpu.sh: the same network, weights, pictures and
preprocessing as `lastlayer --device cuda extract`, written to run on a machine that has only
PyTorch (no timm, numpy or safetensors): ResNet-50 or EfficientNet-Lite0 defined here with the
registry's (timm's) key names, weights read from the safetensors file by hand.

usage: gpu_reference.py MODEL WEIGHTS CIFAR_DIR INPUT_SIZE MEAN STD DEVICE DTYPE BATCH OUT [LIMIT]
  MODEL: resnet50 | efficientnet_lite0;  DEVICE: cuda | cpu;  DTYPE: bf16 | fp32
  CIFAR_DIR holds data_batch_1..5.bin and test_batch.bin (any that exist, in that order).
  OUT: the features of every picture, an f32 tensor written with torch.save.
Pictures cross to the device as uint8 (pinned, non-blocking), are resized there
(F.interpolate bilinear, align_corners=False) and normalised, then run in DTYPE, channels_last,
under torch.inference_mode(), cudnn.benchmark on. Prints one line:
"<N> pictures in <seconds>s; batch loop <rate> pictures/s".
"""
import json
import os
import struct
import sys
import time

t0 = time.time()
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64}


def load_safetensors(path):
    data = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES[v["dtype"]]
        start, end = v["data_offsets"]
        size = torch.tensor([], dtype=dtype).element_size()
        if end == start:
            out[name] = torch.empty(v["shape"], dtype=dtype)
        else:
            flat = torch.frombuffer(data, dtype=dtype, count=(end - start) // size, offset=8 + n + start)
            out[name] = flat.reshape(v["shape"]).clone()
    return out


# ResNet-50 (torchvision/timm layout: stride in the 3x3 convolution).
class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, planes, stride if b == 0 else 1))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


# EfficientNet-Lite0 (timm's tf_efficientnet_lite0: TF "same" padding, ReLU6, BN eps 1e-3).
def conv(cin, cout, k, s, groups=1):
    return nn.Conv2d(cin, cout, k, s, (k - 1) // 2 if s == 1 else 0, groups=groups, bias=False)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3)


def same(x, k, s):
    if s == 1:
        return x
    pad = [max(((i + s - 1) // s - 1) * s + k - i, 0) for i in x.shape[-2:]]
    return F.pad(x, [pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2])


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, k, s):
        super().__init__()
        self.k, self.s, self.skip = k, s, s == 1 and cin == cout
        self.conv_dw, self.bn1 = conv(cin, cin, k, s, cin), bn(cin)
        self.conv_pw, self.bn2 = conv(cin, cout, 1, 1), bn(cout)

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_dw(same(x, self.k, self.s))))
        y = self.bn2(self.conv_pw(y))
        return y + x if self.skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        mid = cin * e
        self.k, self.s, self.skip = k, s, s == 1 and cin == cout
        self.conv_pw, self.bn1 = conv(cin, mid, 1, 1), bn(mid)
        self.conv_dw, self.bn2 = conv(mid, mid, k, s, mid), bn(mid)
        self.conv_pwl, self.bn3 = conv(mid, cout, 1, 1), bn(cout)

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(same(y, self.k, self.s))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    STAGES = [(True, 1, 3, 1, 1, 16), (False, 2, 3, 2, 6, 24), (False, 2, 5, 2, 6, 40), (False, 3, 3, 2, 6, 80),
              (False, 3, 5, 1, 6, 112), (False, 4, 5, 2, 6, 192), (False, 1, 3, 1, 6, 320)]

    def __init__(self):
        super().__init__()
        self.conv_stem, self.bn1 = conv(3, 32, 3, 2), bn(32)
        cin, stages = 32, []
        for ds, repeats, k, s, e, c in self.STAGES:
            blocks = []
            for r in range(repeats):
                stride = s if r == 0 else 1
                blocks.append(DepthwiseSeparable(cin, c, k, stride) if ds else InvertedResidual(cin, c, k, stride, e))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = conv(cin, 1280, 1, 1), bn(1280)

    def forward(self, x):
        x = F.relu6(self.bn1(self.conv_stem(same(x, 3, 2))))
        x = self.blocks(x)
        return F.relu6(self.bn2(self.conv_head(x))).mean((2, 3))


def main():
    model_name, weights, cifar_dir, size, mean, std, device, dtype, batch, out = sys.argv[1:11]
    limit = int(sys.argv[11]) if len(sys.argv) > 11 else None
    size, batch, device = int(size), int(batch), torch.device(device)
    dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    torch.backends.cudnn.benchmark = True
    model = {"resnet50": ResNet50, "efficientnet_lite0": EfficientNetLite0}[model_name]()
    missing, _ = model.load_state_dict(load_safetensors(weights), strict=False)
    if missing:
        sys.exit(f"weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    model = model.eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    # Normalisation as lastlayer does it: (x - 255·mean) · 1/(255·std).
    shift = torch.tensor([float(m) * 255 for m in mean.split(",")], device=device).view(1, 3, 1, 1)
    scale = torch.tensor([1 / (float(s) * 255) for s in std.split(",")], device=device).view(1, 3, 1, 1)

    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    raw = b"".join(open(f"{cifar_dir}/{n}", "rb").read() for n in names if os.path.exists(f"{cifar_dir}/{n}"))
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3073)
    pixels = records[:, 1:].reshape(-1, 3, 32, 32)[:limit].contiguous()
    if device.type == "cuda":
        pixels = pixels.pin_memory()

    feats = []
    t_loop = time.time()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = pixels[i:i + batch].to(device, non_blocking=True).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = ((x - shift) * scale).to(dtype).contiguous(memory_format=torch.channels_last)
            feats.append(model(x).float())
        feats = torch.cat(feats).cpu()
    loop = time.time() - t_loop
    torch.save(feats, out)
    print(f"{len(pixels)} pictures in {time.time() - t0:.1f}s; batch loop {len(pixels) / loop:.1f} pictures/s")


if __name__ == "__main__":
    main()
