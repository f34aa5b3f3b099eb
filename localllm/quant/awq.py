"""AWQ (Lin et al., 2023), as AutoAWQ runs it: for each linear group sharing an input, search a
per-input-channel scale s = mean|x|^r / mean|w|^(1-r) (r on a grid; s = 1 is also a candidate)
that minimizes the output error of quantize(W s) applied to x / s, fold 1/s into the operation
before (an RMSNorm's weight, or the v / up rows feeding o / down), then search a clipping range
per output-channel group, and finally round to nearest: group-wise asymmetric int4.

Losses are measured on the group's own linear outputs, on a fixed subset of calibration tokens
(AutoAWQ measures the attention / MLP block output on all tokens: heavier, same idea).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from localllm.quant.rtn import GroupQuant, fake_quantize, quantize_groups


@dataclass
class ScaleGroup:
    """Linears sharing an input, and what feeds them: a norm's weight or rows of a linear."""

    linears: list[str]  # names in the layer, e.g. "self_attn.qkv_proj"
    prev: str  # "input_layernorm" | "post_attention_layernorm" | a linear's name
    prev_rows: tuple[int, int] | None = None  # rows of `prev` (a linear) that feed the group


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    attn, mlp = layer.self_attn, layer.mlp
    groups = [ScaleGroup(["self_attn.qkv_proj"], "input_layernorm")]
    if attn.kv_size == attn.q_size:  # NOTE: v feeds o channel for channel only without GQA
        start = attn.q_size + attn.kv_size
        groups.append(ScaleGroup(["self_attn.o_proj"], "self_attn.qkv_proj", (start, start + attn.kv_size)))
    groups.append(ScaleGroup(["mlp.gate_up_proj"], "post_attention_layernorm"))
    inter = mlp.down_proj.in_features
    groups.append(ScaleGroup(["mlp.down_proj"], "mlp.gate_up_proj", (inter, 2 * inter)))
    return groups


def _weight_mean(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """AutoAWQ's w_mean: |w| / max|w| of its group, averaged over output rows: [K]."""
    shape = weight.shape
    w = weight.abs().reshape(-1, group_size)
    w = w / (w.amax(dim=1, keepdim=True) + 1e-6)
    return w.reshape(shape).mean(0)


@torch.no_grad()
def search_scale(weight: torch.Tensor, x: torch.Tensor, x_mean: torch.Tensor, group_size: int,
                 n_grid: int = 20) -> torch.Tensor:
    """Best per-input-channel scale [K] for weight [N, K] on inputs x [T, K]."""
    reference = x @ weight.t()
    w_mean = _weight_mean(weight, group_size)
    best_loss, best = None, torch.ones_like(x_mean)
    candidates = [None] + [i / n_grid for i in range(n_grid)]
    for ratio in candidates:
        if ratio is None:
            s = torch.ones_like(x_mean)
        else:
            s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
        w_q = fake_quantize(weight * s[None, :], 4, group_size) / s[None, :]
        loss = (x @ w_q.t() - reference).pow(2).mean()
        if best_loss is None or loss < best_loss:
            best_loss, best = loss, s
    return best


@torch.no_grad()
def search_clip(weight: torch.Tensor, x: torch.Tensor, group_size: int, n_grid: int = 20, max_shrink: float = 0.5,
                rows_per_batch: int = 64) -> torch.Tensor:
    """Best clipping bound per (output row, group) for weight [N, K] on x [T, K]: [N, G]."""
    n, k = weight.shape
    groups = k // group_size
    xg = x.reshape(x.shape[0], groups, group_size)
    best_max = torch.empty(n, groups, device=weight.device)
    for r0 in range(0, n, rows_per_batch):
        w = weight[r0:r0 + rows_per_batch].reshape(-1, groups, group_size)
        reference = torch.einsum("tgc,ngc->ntg", xg, w)
        org_max = w.abs().amax(dim=-1)  # [n, G]
        best_err = torch.full_like(org_max, float("inf"))
        best = org_max.clone()
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            clipped = torch.maximum(torch.minimum(w, max_val[..., None]), -max_val[..., None])
            w_q = fake_quantize(clipped.reshape(-1, k), 4, group_size).reshape(w.shape)
            err = (torch.einsum("tgc,ngc->ntg", xg, w_q) - reference).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, max_val, best)
        best_max[r0:r0 + rows_per_batch] = best
    return best_max


def apply_clip(weight: torch.Tensor, max_val: torch.Tensor, group_size: int) -> None:
    """Clamp each (row, group) of weight [N, K] (any strides) to +-max_val [N, G], in place."""
    n, k = weight.shape
    w = weight.reshape(n, k // group_size, group_size)
    weight.copy_(torch.maximum(torch.minimum(w, max_val[..., None]), -max_val[..., None]).reshape(n, k))


@torch.no_grad()
def awq_layer(layer: nn.Module, inputs: dict[str, torch.Tensor], input_means: dict[str, torch.Tensor],
              group_size: int, n_grid: int = 20, clip_tokens: int = 512) -> dict[str, GroupQuant]:
    """Scale, clip and quantize one decoder layer in place (the float weights end up scaled and
    clipped; norms and feeding rows absorb 1/s). inputs: sampled input rows of each linear.
    Returns each linear's 4-bit GroupQuant."""
    for group in scale_groups(layer):
        (name,) = group.linears
        linear = layer.get_submodule(name)
        x = inputs[name]
        s = search_scale(linear.weight.data.float(), x, input_means[name], group_size, n_grid)
        prev = layer.get_submodule(group.prev)
        if group.prev_rows is None:
            prev.weight.data.div_(s.to(prev.weight.dtype))
        else:
            lo, hi = group.prev_rows
            prev.weight.data[lo:hi].div_(s[:, None])
            if getattr(prev, "bias", None) is not None:
                prev.bias.data[lo:hi].div_(s)
        linear.weight.data.mul_(s[None, :])
        inputs[name] = x / s[None, :]
    results = {}
    attn = layer.self_attn
    for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
        linear = layer.get_submodule(name)
        x = inputs[name][:clip_tokens]
        # NOTE: AutoAWQ leaves q and k unclipped (clipping them hurts attention); v rows are clipped.
        rows = (attn.q_size + attn.kv_size, linear.out_features) if name == "self_attn.qkv_proj" else (0, linear.out_features)
        w = linear.weight.data[rows[0]:rows[1]]
        apply_clip(w, search_clip(w.float(), x, group_size, n_grid), group_size)
        results[name] = quantize_groups(linear.weight.data, 4, group_size, sym=False)
    return results
