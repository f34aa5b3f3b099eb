"""Which linears FP8 hurts most: a Fisher-weighted estimate of the loss each linear's e4m3 rounding
adds, measured layer by layer (one layer in memory, as the quantize pass itself).

For a linear with output y and the rounding error dy it would carry (per-token e4m3 activations
times amax-scaled e4m3 weights, minus the exact product), a second-order Taylor expansion of the
calibration loss with the empirical Fisher as its Hessian gives

    loss increase ~ 1/2 * sum over tokens and outputs of (dL/dy * dy)^2.

NOTE: the gradient is what makes the ranking work. The error relative to the output alone,
||dy|| / ||y||, is ~2.5% for almost every linear of SmolLM2 (e4m3's rounding error is relative):
keeping its top 4 / 8 / 16 in 16 bits gave +1.48% / +0.92% / +1.61% against +1.64% for none, no
consistent ranking. The Fisher weighting puts 22% of the estimate on the last layer's MLP, and
its top 8 / 16 gave +0.89% / +0.60% (emulated; README, Quantization on the CPU).

The pass: embed the windows, run the original layers forward keeping each layer's input; score
the head (final norm, tied or separate lm_head) and take the loss gradient on the last hidden
state; then walk the layers backwards, reloading each and backpropagating through it while
hooks on its linears accumulate (g * dy)^2. Kernels run on the pure-torch reference (the C CPU
kernels have no backward; NOTE: the switch is process-wide for the pass). Memory: one layer, the
windows' hidden states at every layer input, one window's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from localllm.forward_context import set_forward_context
from localllm.kernels import ops, reference
from localllm.quant.fp8 import amax_scales, round_fp8
from localllm.quant.layerwise import LayerRunner, layer_prefix, linear_modules, prefill_context

SENSITIVITY_WINDOWS = 4  # calibration windows the pass backpropagates (SmolLM2: 21 s on 2 cores)


@dataclass(frozen=True)
class LinearSensitivity:
    name: str  # engine name, e.g. "model.layers.29.mlp.down_proj" (fused q/k/v and gate/up are one)
    score: float  # estimated loss increase of FP8 there (arbitrary units: compare within one model)
    num_weights: int
    # the part of it that rounding the inputs adds (FP8 weights either way): what keeping this
    # linear's activations in 16 bits would save (0 when ranking weight-only FP8)
    activation_score: float = 0.0


def rounding_errors(x: torch.Tensor, weight: torch.Tensor, round_inputs: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dy_inputs) in float32: dy = Q_token(x) @ Q_channel(W)^T - x @ W^T, what FP8_DYNAMIC
    changes in the output, and dy_inputs = (Q_token(x) - x) @ Q_channel(W)^T, the part of it the
    input rounding adds (round_inputs=False: weight-only FP8, x stays as it is, dy_inputs = 0)."""
    xf = x.reshape(-1, x.shape[-1]).float()
    x_q = round_fp8(xf, amax_scales(xf)) if round_inputs else xf  # per token: each row's amax maps to 448
    w = weight.float()
    w_q = round_fp8(w, amax_scales(w))
    dy_inputs = (x_q - xf) @ w_q.t()
    return xf @ w_q.t() - xf @ w.t() + dy_inputs, dy_inputs


class _FisherHooks:
    """Forward hooks on one layer's linears: each output gets a gradient hook adding (g * dy)^2
    (and (g * dy_inputs)^2 to the activation scores)."""

    def __init__(self, layer: torch.nn.Module, prefix: str, scores: dict[str, float],
                 activation_scores: dict[str, float], round_inputs: bool):
        self.prefix, self.scores, self.round_inputs = prefix, scores, round_inputs
        self.activation_scores = activation_scores
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linear_modules(layer).items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            with torch.no_grad():
                dy, dy_inputs = rounding_errors(inputs[0], module.weight, self.round_inputs)
                dy, dy_inputs = dy.view(output.shape), dy_inputs.view(output.shape)
            key = self.prefix + name

            def on_grad(g: torch.Tensor) -> None:
                g = g.float()
                self.scores[key] = self.scores.get(key, 0.0) + 0.5 * float((g * dy).pow(2).sum())
                self.activation_scores[key] = (self.activation_scores.get(key, 0.0)
                                               + 0.5 * float((g * dy_inputs).pow(2).sum()))

            output.register_hook(on_grad)

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _layer_out(layer, runner: LayerRunner, x: torch.Tensor) -> torch.Tensor:
    """One window [L, H] through the layer (the residual stream leaving it), with autograd."""
    context, positions = prefill_context(1, x.shape[0], 1, runner.num_kv_heads, runner.head_dim, torch.float32,
                                         runner.device)
    with set_forward_context(context):
        y, residual = layer(positions, x, None)
    return y + residual


def fp8_sensitivity(runner: LayerRunner, windows: torch.Tensor, embed: torch.Tensor, norm: torch.Tensor,
                    head: torch.Tensor, eps: float, num_layers: int,
                    round_inputs: bool = True) -> list[LinearSensitivity]:
    """windows int64 [W, L]; embed [V, H], norm [H], head [V, H] float32 on runner.device ->
    every decoder linear with its score, most sensitive first (round_inputs: see rounding_errors)."""
    device = runner.device
    scores: dict[str, float] = {}
    activation_scores: dict[str, float] = {}
    sizes: dict[str, int] = {}
    with ops.use_backend("reference"):
        with torch.no_grad():
            hidden = F.embedding(windows.to(device), embed)  # [W, L, H]
            inputs = []
            for i in range(num_layers):
                layer = runner.load(i)
                inputs.append(hidden)
                hidden = torch.stack([_layer_out(layer, runner, h) for h in hidden])
        grads = []
        for w, window in enumerate(windows):
            h = hidden[w].clone().requires_grad_(True)
            with torch.enable_grad():
                logits = reference.rms_norm(h, norm, eps) @ head.t()
                F.cross_entropy(logits[:-1].float(), window[1:].to(device)).backward()
            grads.append(h.grad)
        del hidden
        grad = torch.stack(grads)
        for i in reversed(range(num_layers)):
            layer = runner.load(i)
            for name, module in linear_modules(layer).items():
                sizes[layer_prefix(i) + name] = module.weight.numel()
            hooks = _FisherHooks(layer, layer_prefix(i), scores, activation_scores, round_inputs)
            try:
                for w in range(windows.shape[0]):
                    x = inputs[i][w].clone().requires_grad_(True)
                    with torch.enable_grad():
                        _layer_out(layer, runner, x).backward(grad[w])
                    grad[w] = x.grad
            finally:
                hooks.close()
            inputs[i] = None  # NOTE: this layer's inputs are no longer needed; free them as we go
    ranked = sorted(scores, key=lambda n: -scores[n])
    return [LinearSensitivity(n, scores[n], sizes[n], activation_scores[n]) for n in ranked]
