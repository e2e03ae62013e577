"""Reference side of tests/parity.rs: the same weights in timm, the same pictures through
torchvision/timm preprocessing; prints how far lastlayer is from them, as JSON.

usage: parity.py SPEC.json
SPEC: {"timm_name", "weights", "tensors", "photos": [...], "input_size", "interpolation",
       "crop_pct", "mean", "std"}
"""
import json
import math
import sys

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision.io import decode_image
from torchvision.transforms import v2

spec = json.load(open(sys.argv[1]))
torch.set_num_threads(2)
t = load_file(spec["tensors"])
size, mean, std = spec["input_size"], spec["mean"], spec["std"]
interp = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}[spec["interpolation"]]


def normalize(x):  # x: float in [0, 1], NCHW
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# CIFAR-10: F.interpolate(bilinear, align_corners=False) on [0, 1] pixels, then normalise.
cifar_ref = normalize(F.interpolate(t["cifar_pixels"].float() / 255.0, size=(size, size), mode="bilinear", align_corners=False))
# Photos: timm's eval transform on uint8 tensors (torchvision, antialiased), and with PIL.
scale = math.floor(size / spec["crop_pct"])
tv = v2.Compose([v2.Resize(scale, interpolation=interp, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)])
photo_tv = normalize(torch.stack([tv(decode_image(p, mode="RGB")) for p in spec["photos"]]))
pil = timm.data.create_transform(input_size=(3, size, size), interpolation=spec["interpolation"], crop_pct=spec["crop_pct"], mean=mean, std=std)
photo_pil = torch.stack([pil(Image.open(p).convert("RGB")) for p in spec["photos"]])

if spec.get("load_as_pretrained"):
    # As a user's checkpoint loads: timm's filter resamples the position embeddings to img_size.
    model = timm.create_model(spec["timm_name"], pretrained=True, num_classes=0, img_size=size,
                              pretrained_cfg_overlay=dict(file=spec["weights"])).eval()
    own, given = set(model.state_dict()), set(load_file(spec["weights"]))
    missing, unexpected = sorted(own - given), sorted(given - own)
else:
    model = timm.create_model(spec["timm_name"], pretrained=False, num_classes=0).eval()
    missing, unexpected = model.load_state_dict(load_file(spec["weights"]), strict=False)
missing = [k for k in missing if not k.endswith("num_batches_tracked")]
with torch.inference_mode():
    inputs = torch.cat([t["cifar_input"], t["photo_input"]])
    ref = model(inputs)
    ref_own = model(torch.cat([cifar_ref, photo_tv]))
mine = t["features"]
scale_ = ref.abs().max().item()
print(json.dumps({
    "model": spec["timm_name"],
    "missing_in_lastlayer": missing,
    "unexpected_from_lastlayer": list(unexpected),
    "feature_scale": scale_,
    "feature_max_abs_diff": (mine - ref).abs().max().item(),
    "feature_rel_diff": (mine - ref).abs().max().item() / scale_,
    "end_to_end_rel_diff": (mine - ref_own).abs().max().item() / scale_,
    "cifar_input_max_diff": (t["cifar_input"] - cifar_ref).abs().max().item(),
    "photo_input_max_diff_torchvision": (t["photo_input"] - photo_tv).abs().max().item(),
    "photo_input_max_diff_pil": (t["photo_input"] - photo_pil).abs().max().item(),
    "photo_input_mean_diff_pil": (t["photo_input"] - photo_pil).abs().mean().item(),
    "std_in_pixels": min(std) * 255,
}))
