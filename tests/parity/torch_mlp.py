"""The MLP in PyTorch, from its definition (nn/mlp.h): Linear -> activation
for each hidden width, then a Linear to the outputs; no dropout (the parity
cases set it to 0). GELU is the tanh form, the one kiln documents
(nn/activation.h: "GELU (tanh form)").

Parameter names follow kiln's Sequential: layers.<i>.weight / layers.<i>.bias
with the activations taking the odd indices, exactly what torch.nn.Sequential
of the same modules names them; nn.Linear's (out, in) layout is kiln's too.
"""
import torch
from torch import nn


def build(cfg, dtype):
    act = {"relu": lambda: nn.ReLU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh")}[cfg["activation"]]
    layers, width = [], cfg["in"]
    for h in cfg["hidden"]:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, cfg["out"]))
    model = nn.Module()
    model.layers = nn.Sequential(*layers)
    return model.to(dtype)


def torch_layout(name, t):
    return t


def kiln_layout(name, t):
    return t


def forward(model, x):
    return model.layers(x)  # (B, in) -> (B, out)
