"""Cost per picture of every registry backbone at its default input size, counted by PyTorch's
FlopCounterMode on timm's own model (random weights; nothing is downloaded). A multiply-add
counts as two FLOPs. These are the `gflops` values in pretrained/models.toml.

usage: .venv/bin/python benches/flops.py [pretrained/models.toml]
"""
import sys
import tomllib

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

registry = tomllib.load(open(sys.argv[1] if len(sys.argv) > 1 else "pretrained/models.toml", "rb"))
for m in registry["model"]:
    name = m["hub_repo"].removeprefix("timm/")
    kwargs = {"img_size": m["input_size"]} if name.startswith("vit_") else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    x = torch.zeros(1, 3, m["input_size"], m["input_size"])
    with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
        features = model(x)
    assert features.shape[-1] == m["feature_width"], (name, features.shape)
    print(f'{m["name"]:32} {m["input_size"]:4} px  {counter.get_total_flops() / 1e9:7.2f} GFLOPs', flush=True)
