"""LoRA on GPT-2 in PyTorch (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"), on the GPT-2 of torch_gpt.py:

  h = x W0 + b0 + (alpha / r) * (x A^T) B^T          W0 (in, out) Conv1D, frozen
  A (r, in), B (out, r): nn.Linear(in, r) and nn.Linear(r, out) weights

Everything but A and B is frozen (requires_grad False), so torch computes
gradients for the adapters only. Parameter names are the wrapped layer's:
h.N.attn.c_attn.weight / .bias (the frozen base) and
h.N.attn.c_attn.lora_A.weight / .lora_B.weight.

extra_checks: kiln's merged export (W0 + (alpha/r) (B A)^T in the Conv1D
layout, Hugging Face GPT-2 names) against torch's own merge of its final
adapters, and a plain GPT-2 loaded from that file reproduces the adapted
model's final logits.
"""
import torch
from torch import nn

import torch_gpt


class LoraConv1D(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        n_in, n_out = base.weight.shape  # Conv1D stores (in, out)
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.Linear(n_in, r, bias=False)
        self.lora_B = nn.Linear(r, n_out, bias=False)
        self.scale = alpha / r

    def forward(self, x):
        return x @ self.weight + self.bias + self.scale * self.lora_B(self.lora_A(x))

    def merged_weight(self):
        return self.weight + self.scale * (self.lora_B.weight @ self.lora_A.weight).t()  # (in, out)


def build(cfg, dtype):
    model = torch_gpt.build(cfg, dtype)
    wanted = set(cfg["lora_targets"])
    for i, block in enumerate(model.h):
        for parent, attr, name in ((block.attn, "c_attn", "attn.c_attn"), (block.attn, "c_proj", "attn.c_proj"),
                                   (block.mlp, "c_fc", "mlp.c_fc"), (block.mlp, "c_proj", "mlp.c_proj")):
            if f"h.{i}.{name}" in wanted:
                setattr(parent, attr, LoraConv1D(getattr(parent, attr), cfg["lora_rank"], cfg["lora_alpha"]))
    model = model.to(dtype)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    return model


torch_layout = torch_gpt.torch_layout
kiln_layout = torch_gpt.kiln_layout
forward = torch_gpt.forward


def extra_checks(ctx):
    r = ctx.report
    extra = ctx.case["extra"]
    frozen = [n for n, p in ctx.model.named_parameters() if not p.requires_grad]
    r.check("frozen base", len(frozen) > 0, f"{len(frozen)} frozen tensors, "
            f"{sum(1 for _ in ctx.model.parameters()) - len(frozen)} adapter tensors")
    if "merged" not in extra:
        return
    cfg = ctx.case["model"]
    V = cfg["vocab_size"]
    merged, _ = ctx.read_safetensors(ctx.path(extra["merged"]))
    # torch's own merge of its final weights, in Hugging Face GPT-2's names and layout.
    want = {}
    for n, p in ctx.model.named_parameters():
        if ".lora_" in n:
            continue
        want[n] = p.detach().float()
    for n, m in ctx.model.named_modules():
        if isinstance(m, LoraConv1D):
            want[n + ".weight"] = m.merged_weight().detach().float()
    want["wte.weight"] = want["wte.weight"][:V]
    r.check("merged names", sorted(merged) == sorted(want),
            f"{len(merged)} tensors, GPT-2's names" if sorted(merged) == sorted(want) else
            f"only in kiln's file: {sorted(set(merged) - set(want))}, missing: {sorted(set(want) - set(merged))}")
    if sorted(merged) != sorted(want):
        return
    for n in sorted(want):
        if tuple(merged[n].shape) != tuple(want[n].shape):
            r.check(f"merged {n} shape", False, f"{tuple(merged[n].shape)} vs {tuple(want[n].shape)}")
            continue
        r.compare(f"merged {n}", merged[n], want[n], ctx.tol("weights"))
    plain = torch_gpt.Gpt2(V, cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"])
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    r.check("merged loads as GPT-2", not missing and not unexpected, f"missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        ctx.model.eval()
        adapted = ctx.model(ctx.input.long()).float()[..., :V]
        folded = plain(ctx.input.long())
    r.compare("merged logits vs adapted logits (torch)", folded, adapted, ctx.tol("final_logits"))
    r.compare("merged logits (kiln file) vs kiln final logits", folded,
              ctx.kiln_logits["final_logits"].float()[..., :V], ctx.tol("final_logits"))
