"""GPT-2 in PyTorch, written from GPT-2's definition (Radford et al. 2019,
and the layout of Hugging Face's GPT2Model), not from kiln's code:

  x = wte[tokens] + wpe[0..T)                                   (B, T, C)
  per block (pre-LN):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    attn: q, k, v = split(c_attn(x)) into H heads of D = C/H;
          softmax(q k^T / sqrt(D), causal) v, heads merged, c_proj
    mlp:  c_proj(gelu(c_fc(x))), gelu the tanh form
          0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  logits = ln_f(x) wte^T                                         tied head
  LayerNorm eps 1e-5 (GPT-2's layer_norm_epsilon).

The projections are Hugging Face's Conv1D: y = x W + b with W stored
(in, out), so a Hugging Face GPT-2 state dict (and kiln's export) loads with
load_state_dict by name and layout as it is. kiln keeps nn.Linear's (out, in)
for those four matrices (nn/gpt.h), so torch_layout / kiln_layout transpose
them; every other tensor has the same layout on both sides. The embedding
table has `padded_vocab_size` rows (kiln pads V to a multiple of 128; the
loss uses the first V columns); the Hugging Face check builds it with V rows.
"""
import math
import struct

import torch
from torch import nn
from torch.nn import functional as F

# GPT-2's layer_norm_epsilon, 1e-5, as a float: kiln's LayerNorm keeps eps as
# float (nn/layernorm.h), and float32 PyTorch rounds it so too; rounding it
# here keeps the float64 comparison from seeing eps's last bits (~1e-12).
LN_EPS = struct.unpack("f", struct.pack("f", 1e-5))[0]
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


class Conv1D(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.n_head = H
        self.c_attn = Conv1D(C, 3 * C)
        self.c_proj = Conv1D(C, C)

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)                       # 3 x (B, T, C)
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)                 # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)                 # heads merged
        return self.c_proj(y)


class Mlp(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_fc = Conv1D(C, 4 * C)
        self.c_proj = Conv1D(4 * C, C)

    def forward(self, x):
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C, eps=LN_EPS)
        self.attn = Attention(C, H)
        self.ln_2 = nn.LayerNorm(C, eps=LN_EPS)
        self.mlp = Mlp(C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt2(nn.Module):
    def __init__(self, vocab_rows, n_positions, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab_rows, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=LN_EPS)

    def forward(self, tokens):                                         # (B, T) ids
        T = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(T))               # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()                      # (B, T, rows of wte)


def build(cfg, dtype):
    assert cfg["bias"], "torch_gpt.py implements GPT-2 with biases"
    return Gpt2(cfg["padded_vocab_size"], cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"]).to(dtype)


def is_conv1d(name):
    return name.endswith(CONV1D)


def torch_layout(name, t):
    return t.t().contiguous() if is_conv1d(name) else t


def kiln_layout(name, t):
    return t.t().contiguous() if is_conv1d(name) else t


def zero_grad_elements(name, shape, cfg):
    """The key bias (the middle third of c_attn.bias): softmax is invariant
    to adding q.b_k to every score of a row, so its gradient is exactly zero
    and what both sides compute is rounding noise."""
    if not name.endswith(".attn.c_attn.bias"):
        return None
    C = cfg["n_embd"]
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[C:2 * C] = True
    return mask


def forward(model, tokens):
    return model(tokens.long())


def extra_checks(ctx):
    """kiln's Hugging Face export (nn::export_gpt_safetensors, what `kiln
    export` writes) loads into GPT-2 by HF names and layout: every tensor
    equals kiln's final weight bit for bit, and the loaded model's logits
    equal kiln's final logits."""
    extra = ctx.case["extra"]
    r = ctx.report
    if "hf_export" not in extra:
        return
    cfg = ctx.case["model"]
    V = cfg["vocab_size"]
    hf, meta = ctx.read_safetensors(ctx.path(extra["hf_export"]))
    want_meta = {"vocab_size": V, "n_positions": cfg["block_size"], "n_embd": cfg["n_embd"],
                 "n_layer": cfg["n_layer"], "n_head": cfg["n_head"]}
    bad = {k: (meta.get(k), v) for k, v in want_meta.items() if meta.get(k) != str(v)}
    r.check("hf metadata", not bad, f"architecture {want_meta}" if not bad else f"(file, want): {bad}")
    model = Gpt2(V, cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"])  # V rows, as GPT-2
    try:
        missing, unexpected = model.load_state_dict(hf, strict=False)
    except RuntimeError as e:  # a shape that is not GPT-2's (e.g. a Conv1D weight left (out, in))
        r.check("hf names and shapes", False, " ".join(str(e).split()))
        return
    r.check("hf names and shapes", not missing and not unexpected,
            f"{len(hf)} tensors load by HF GPT-2 names" if not missing and not unexpected else
            f"missing {missing}, unexpected {unexpected}")
    if missing or unexpected:
        return
    for name, t in hf.items():
        want = torch_layout(name, ctx.kiln_final[name])
        if name == "wte.weight":
            want = want[:V]
        r.compare(f"hf {name}", t, want, ctx.tol("exact"))
    with torch.no_grad():
        logits = model(ctx.input.long())
    r.compare("hf logits (final)", ctx.kiln_logits["final_logits"][..., :V], logits, ctx.tol("logits"))
