"""Teacher-forced scoring of token windows: negative log-likelihood of each next token and the
model's top-1 prediction, for the quality report (original vs quantized)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from localllm.forward_context import set_forward_context
from localllm.models.registry import kv_cache_spec


def nll_and_top1(logits: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [L, V] of one window [L] -> (nll float32 [L - 1], top-1 int64 [L - 1])."""
    logits = logits[:-1].float()
    targets = window[1:].to(logits.device)
    nll = -F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    return nll.cpu(), logits.argmax(dim=-1).cpu()


@torch.no_grad()
def score_model(model, hf_config, windows: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """An engine model over each window [E, L] in one prefill -> (nll [E, L-1], top1 [E, L-1])."""
    from localllm.quant.layerwise import prefill_context

    num_layers, num_kv_heads, head_dim = kv_cache_spec(hf_config)
    nlls, tops = [], []
    for window in windows:
        context, positions = prefill_context(1, window.numel(), num_layers, num_kv_heads, head_dim, dtype, device)
        with set_forward_context(context):
            hidden = model(window.to(device), positions)
        nll, top = nll_and_top1(model.compute_logits(hidden), window)
        nlls.append(nll)
        tops.append(top)
    return torch.stack(nlls), torch.stack(tops)


def perplexity(nll: torch.Tensor) -> float:
    return float(torch.exp(nll.double().mean()))
