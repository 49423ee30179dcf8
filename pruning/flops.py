"""Parameter and FLOP counts of a (pruned) model, measured by running it.

FLOPs come from torch's own FlopCounterMode over one real forward pass: matrix multiplies,
attention and convolutions, two FLOPs per multiply-add (norms, softmax and activations are not
counted, as is usual). Running the model means the count follows whatever the pruned model
really does, including per-image token counts in threshold mode when real images are given.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, images: torch.Tensor) -> float:
    """FLOPs per image of `model` on `images` (B, 3, H, W), averaged over the batch.

    Images run one at a time so that padding in threshold mode is never counted.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    # Attention as explicit matrix products: some torch releases count no FLOPs for the fused CPU
    # kernel (torch 2.14: DeiT-Tiny 2.15 G instead of 2.51 G, and the meta device disagreeing).
    with counter, sdpa_kernel(SDPBackend.MATH):
        for image in images:
            model(image[None])
    return counter.get_total_flops() / len(images)
