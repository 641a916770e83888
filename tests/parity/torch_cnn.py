"""The plain CNN and the ResNet in PyTorch, written from their definitions
(nn/cnn.h and nn/resnet.h describe the architectures; the layers are
torch.nn's own Conv2d, BatchNorm2d, MaxPool2d/AvgPool2d, Flatten, Linear),
not from kiln's code:

  images (B, H, W, C) NHWC -> NCHW for torch.nn
  cnn:    per stage, `blocks` x [Conv2d(k, padding k//2, no bias), BatchNorm2d,
          ReLU], then a 2x2 stride-2 pool (max or avg; floor for odd sizes);
          head: Flatten (NCHW: channel-major) or global average, optional
          Linear(hidden) + ReLU, Linear(classes)
  resnet: stem Conv2d 3x3 (no bias) + BatchNorm2d + ReLU; stages of basic
          blocks relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
          first block of every later stage with stride 2 (conv1 and a 1x1
          stride-2 Conv2d + BatchNorm2d shortcut), identity shortcuts
          otherwise; global average pool, Linear(classes)
  BatchNorm2d in train mode (batch statistics, biased variance to normalize,
  running statistics moved by `momentum` toward the batch mean and the
  unbiased variance), eval mode for the final logits; eps and momentum as
  floats, as kiln keeps them.

Parameter names are kiln's (layers.<i> for the CNN, stem/stages/head for the
ResNet: the Sequential indices count the parameter-free layers too). Layouts
differ in two ways: kiln's convolution weights are KRSC (K, R, S, C), torch's
(K, C, R, S); and kiln flattens NHWC features in (row, column, channel) order,
torch.nn.Flatten NCHW ones in (channel, row, column) order, so the first head
Linear's columns are permuted. torch_layout / kiln_layout convert.

Weight decay: conv and Linear weights; not biases or BatchNorm parameters.
"""
import struct

import torch
from torch import nn


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def batchnorm(c, cfg):
    # running statistics start at PyTorch's own 0 / 1 (kiln's too; parity.py
    # loads parameters only) and are compared after training (extra_checks)
    return nn.BatchNorm2d(c, eps=f32(cfg["bn_eps"]), momentum=f32(cfg["bn_momentum"]))


class GlobalAvgPool(nn.Module):
    def forward(self, x):  # (B, C, H, W) -> (B, C)
        return x.mean(dim=(2, 3))


def build_cnn(cfg, geometry):
    layers, c, h, w = [], cfg["in_channels"], cfg["height"], cfg["width"]
    k = cfg["kernel"]
    for out, blocks in zip(cfg["channels"], cfg["blocks"]):
        for _ in range(blocks):
            layers += [nn.Conv2d(c, out, k, padding=k // 2, bias=False), batchnorm(out, cfg), nn.ReLU()]
            c = out
        if h >= 2 and w >= 2:
            layers.append(nn.MaxPool2d(2) if cfg["pool"] == "max" else nn.AvgPool2d(2))
            h, w = h // 2, w // 2
    if cfg["head"] == "avgpool":
        layers.append(GlobalAvgPool())
        features = c
    else:
        layers.append(nn.Flatten())
        features = c * h * w
        # the Linear that reads the flattened features (the next layer)
        geometry["flatten_linear"] = f"layers.{len(layers)}.weight"
        geometry["chw"] = (c, h, w)
    if cfg["hidden"] > 0:
        layers += [nn.Linear(features, cfg["hidden"]), nn.ReLU()]
        features = cfg["hidden"]
    layers.append(nn.Linear(features, cfg["classes"]))
    return Cnn(layers)


class Cnn(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, cfg):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batchnorm(cout, cfg)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = batchnorm(cout, cfg)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), batchnorm(cout, cfg))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = cfg["channels"]
        self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], ch[0], 3, padding=1, bias=False),
                                  batchnorm(ch[0], cfg), nn.ReLU())
        stages, c = [], ch[0]
        for s, (out, blocks) in enumerate(zip(ch, cfg["blocks"])):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(c, out, 2 if (s > 0 and b == 0) else 1, cfg))
                c = out
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(c, cfg["classes"]))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


_GEOMETRY = {}


def build(cfg, dtype):
    _GEOMETRY.clear()
    model = build_cnn(cfg, _GEOMETRY) if cfg["arch"] == "cnn" else ResNet(cfg)
    return model.to(dtype)


def torch_layout(name, t):
    if t.dim() == 4:  # KRSC -> KCRS
        return t.permute(0, 3, 1, 2).contiguous()
    if name == _GEOMETRY.get("flatten_linear"):  # columns (h, w, c) -> (c, h, w)
        c, h, w = _GEOMETRY["chw"]
        return t.reshape(t.shape[0], h, w, c).permute(0, 3, 1, 2).reshape(t.shape[0], -1).contiguous()
    return t


def kiln_layout(name, t):
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).contiguous()
    if name == _GEOMETRY.get("flatten_linear"):
        c, h, w = _GEOMETRY["chw"]
        return t.reshape(t.shape[0], c, h, w).permute(0, 2, 3, 1).reshape(t.shape[0], -1).contiguous()
    return t


def decays(name, param):
    """Conv and Linear weights; not biases, not BatchNorm's weight and bias."""
    return name.endswith(".weight") and param.dim() >= 2


def forward(model, images):
    return model(images.permute(0, 3, 1, 2))  # (B, H, W, C) -> NCHW -> (B, classes)


def extra_checks(ctx):
    """Every BatchNorm running statistic after the 10 training forwards."""
    kb, _ = ctx.read_safetensors(ctx.path(ctx.case["extra"]["buffers"]))
    tb = {n: b for n, b in ctx.model.named_buffers() if not n.endswith("num_batches_tracked")}
    same = sorted(kb) == sorted(tb)
    ctx.report.check("buffer names", same and len(tb) > 0,
                     f"{len(tb)} BatchNorm buffers, the same names on both sides" if same else
                     f"only in torch: {sorted(set(tb) - set(kb))}, only in kiln: {sorted(set(kb) - set(tb))}")
    if not same:
        return
    for n in sorted(tb):
        ctx.report.compare(f"final {n}", kb[n], tb[n].detach(), ctx.tol("weights"))
