"""Small layer surgery shared by the registry's own architectures and the zoos."""

from __future__ import annotations

import torch
from torch import nn


def adapt_conv_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs, its filters averaged over the input channels (the same
    conv when it already fits)."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful: average over the RGB channels
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new
