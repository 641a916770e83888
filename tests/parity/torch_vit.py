"""The Vision Transformer in PyTorch, written from its definition
(Dosovitskiy et al. 2021, and the layout of timm's VisionTransformer), not
from kiln's code:

  images (B, H, W, C) NHWC -> NCHW
  e = Conv2d(C, dim, kernel p, stride p)(images), flattened row-major over
      the (H/p, W/p) grid                                    (B, N, dim)
  cls pooling:  x = [cls_token; e] + pos_embed               (B, 1 + N, dim)
  mean pooling: x = e + pos_embed                            (B, N, dim)
  per block (pre-LN):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    attn: qkv = c_attn(x) reshaped (B, T, 3, H, D) (timm's layout);
          softmax(q k^T / sqrt(D)) v, no mask (every token sees every token),
          heads merged, c_proj
    mlp:  c_proj(gelu_tanh(c_fc(x))) with c_fc (dim -> mlp_hidden)
  cls:  z = norm(x)[:, 0]          (timm: norm every token, read the class token)
  mean: z = norm(mean over tokens of x)   (timm's fc_norm for global_pool='avg')
  logits = head(z)                                           (B, classes)
  LayerNorm eps 1e-5.

Parameter names are kiln's (patch_embed.proj, cls_token, pos_embed,
blocks.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj},
norm, head). Layouts differ in one tensor: the patch projection is a Conv2d
weight (dim, C, p, p) here and a Linear over (row, column, channel)-ordered
patches in kiln, (dim, p*p*C); torch_layout / kiln_layout convert.

Weight decay (timm's no_weight_decay and the usual ViT practice): every
Linear/Conv weight decays; biases, LayerNorms, the class token and the
position embedding do not.
"""
import math
import struct

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = struct.unpack("f", struct.pack("f", 1e-5))[0]  # kiln keeps eps as float (see torch_gpt.py)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.heads, C // self.heads
        q, k, v = self.c_attn(x).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).softmax(dim=-1)      # (B, H, T, T), no mask
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PatchEmbed(nn.Module):
    def __init__(self, C, dim, p):
        super().__init__()
        self.proj = nn.Conv2d(C, dim, kernel_size=p, stride=p)

    def forward(self, images):                                   # (B, H, W, C)
        y = self.proj(images.permute(0, 3, 1, 2))                # (B, dim, H/p, W/p)
        return y.flatten(2).transpose(1, 2)                      # (B, N, dim), row-major over the grid


class Vit(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dim, p = cfg["dim"], cfg["patch"]
        N = (cfg["image_h"] // p) * (cfg["image_w"] // p)
        self.pool = cfg["pool"]
        self.patch_embed = PatchEmbed(cfg["channels"], dim, p)
        prefix = 1 if self.pool == "cls" else 0
        if prefix:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix + N, dim))
        self.blocks = nn.ModuleList(Block(dim, cfg["heads"], cfg["mlp_hidden"]) for _ in range(cfg["depth"]))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, cfg["classes"])

    def forward(self, images):
        x = self.patch_embed(images)
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for b in self.blocks:
            x = b(x)
        z = self.norm(x)[:, 0] if self.pool == "cls" else self.norm(x.mean(dim=1))
        return self.head(z)


# The patch projection's geometry (p, C) for the layout conversion, recorded
# by build() (parity.py builds the model before converting any tensor; the
# layout functions get no config).
_GEOMETRY = {}


def build(cfg, dtype):
    _GEOMETRY.update(p=cfg["patch"], C=cfg["channels"])
    return Vit(cfg).to(dtype)


def torch_layout(name, t):
    """kiln's (dim, p*p*C) projection over (row, column, channel)-ordered
    patches -> Conv2d's (dim, C, p, p); every other tensor is the same."""
    if name != "patch_embed.proj.weight":
        return t
    p, C = _GEOMETRY["p"], _GEOMETRY["C"]
    return t.reshape(t.shape[0], p, p, C).permute(0, 3, 1, 2).contiguous()


def kiln_layout(name, t):
    if name != "patch_embed.proj.weight":
        return t
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1).contiguous()


def decays(name, param):
    """Weights of the Linears and the Conv2d; not biases, LayerNorms, cls_token or pos_embed."""
    return name.endswith(".weight") and param.dim() >= 2


def zero_grad_elements(name, shape, cfg):
    """The key bias (the middle third of c_attn.bias): softmax is invariant
    to adding q.b_k to every score of a row, with or without a mask, so its
    gradient is exactly zero and what both sides compute is rounding noise."""
    if not name.endswith(".attn.c_attn.bias"):
        return None
    C = cfg["dim"]
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[C:2 * C] = True
    return mask


def forward(model, images):
    return model(images)  # (B, H, W, C) -> (B, classes)
