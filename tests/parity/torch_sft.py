"""SFT in PyTorch: the GPT-2 of torch_gpt.py, run on each example alone.

kiln (tests/parity/case_sft.cpp) trains on one packed batch: several
prompt/completion examples per row of T positions, segment ids keeping them
apart in attention and positions restarting at 0 in each, the loss on
completion tokens only. Here nothing is packed or masked: each example

    ids = prompt + completion                 (completion ends with EOS)
    input = ids[:-1], positions 0 .. len - 1  (torch_gpt's own arange)
    target[t] = ids[t + 1] where t + 1 >= len(prompt), else ignored

runs through the model by itself (a batch of one), and the loss is the mean
cross-entropy over every example's completion targets. So the two agree only
if kiln's packing adds nothing: no attention across examples, positions that
restart, no loss on prompts or padding.

To compare logits position by position, each example's logits are put where
kiln's batch placed it (case.json's model.rows: example indices per row, in
window order, laid out from position 0); the positions after a row's last
example are padding, which kiln also runs as a sequence of its own (token
pad_id, positions from 0) and which carries no loss, so it is run alone here
too. The packed tokens and targets this implies are checked to equal kiln's
batch exactly (extra_checks).
"""
import torch
from torch.nn import functional as F

import torch_gpt

# The layout from case.json's "model" (set by build(); loss() and forward()
# are called without the config).
_layout = {}


def build(cfg, dtype):
    _layout.clear()
    _layout.update(examples=cfg["examples"], rows=cfg["rows"], T=cfg["seq_len"], pad=cfg["pad_id"])
    return torch_gpt.build(cfg, dtype)


torch_layout = torch_gpt.torch_layout
kiln_layout = torch_gpt.kiln_layout
zero_grad_elements = torch_gpt.zero_grad_elements


def _pieces():
    """Per row: [(input ids, targets)] for each example, then the padding."""
    T, out = _layout["T"], []
    for row in _layout["rows"]:
        pieces, used = [], 0
        for e in row:
            ex = _layout["examples"][e]
            ids = ex["prompt"] + ex["completion"]
            n_prompt = len(ex["prompt"])
            inp = ids[:-1]
            tgt = [ids[t + 1] if t + 1 >= n_prompt else -100 for t in range(len(inp))]
            pieces.append((inp, tgt))
            used += len(inp)
        assert used <= T, f"row {row}: {used} positions > T {T}"
        if used < T:
            pieces.append(([_layout["pad"]] * (T - used), [-100] * (T - used)))
        out.append(pieces)
    return out


def packed_tokens_and_targets():
    """What kiln's batch should hold: (B, T) tokens and (B*T,) targets."""
    rows = _pieces()
    tokens = torch.tensor([[i for inp, _ in r for i in inp] for r in rows])
    targets = torch.tensor([t for r in rows for _, tgt in r for t in tgt])
    return tokens, targets


def forward(model, tokens):
    """(B, T, Vp) logits, each piece computed alone; `tokens` (kiln's packed
    batch) is not read: the pieces come from the examples themselves."""
    rows = []
    for pieces in _pieces():
        out = [model(torch.tensor([inp]))[0] for inp, _ in pieces]  # each (len, Vp), alone
        rows.append(torch.cat(out, dim=0))                           # (T, Vp)
    return torch.stack(rows)                                         # (B, T, Vp)


def loss(logits, targets, classes):
    """Mean cross-entropy over the completion targets built here (kiln's
    targets are checked to equal them in extra_checks)."""
    _, own = packed_tokens_and_targets()
    rows = logits.reshape(-1, logits.shape[-1])[:, :classes]
    return F.cross_entropy(rows, own, ignore_index=-100)


def extra_checks(ctx):
    tokens, targets = packed_tokens_and_targets()
    r = ctx.report
    r.compare("packed tokens (kiln batch vs examples laid out)", ctx.input.long(), tokens, ctx.tol("exact"))
    r.compare("packed targets (completion tokens only)", ctx.targets, targets, ctx.tol("exact"))
    n = int((targets != -100).sum().item())
    r.check("loss tokens", n == 16, f"{n} completion targets over {len(_layout['examples'])} examples")
