"""One decoder layer at a time: the engine's own layer (built by models.registry.build_model on a
one-layer copy of the config), loaded with layer i's weights, run over packed batches of windows
on a small paged KV cache.

Peak memory is one layer's float32 weights plus the activations of the windows (hidden states
[S, L, H] and whatever an observer keeps), never the whole model: the same module is reloaded
for every layer, and weights come from a random-access WeightSource one tensor at a time.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
from torch import nn

from localllm.forward_context import AttentionMetadata, ForwardContext, set_forward_context
from localllm.models.registry import build_model, kv_cache_spec
from localllm.quant.weights import WeightSource

BLOCK_SIZE = 16
# Linears of a decoder layer, by their engine names (fused as the engine runs them).
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


class LayerRunner:
    """load(i) -> the layer module holding layer i's weights (float32); forward(layer, hidden)."""

    def __init__(self, hf_config, source: WeightSource, device: torch.device, seq_len: int, batch_size: int = 8):
        self.hf_config, self.source, self.device = hf_config, source, torch.device(device)
        self.seq_len, self.batch_size = seq_len, batch_size
        config = copy.deepcopy(hf_config)
        config.num_hidden_layers = 1
        config.vocab_size = 1  # NOTE: the embedding and head are handled outside; keep them tiny here
        config.tie_word_embeddings = True
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.max_position_embeddings = max(int(config.max_position_embeddings), seq_len)
        self._model = build_model(config, torch.float32, self.device, max_model_len=seq_len)
        _, self.num_kv_heads, self.head_dim = kv_cache_spec(config)
        self.hidden_size = config.hidden_size

    def layer_names(self, i: int) -> list[str]:
        prefix = layer_prefix(i)
        return [n for n in self.source.names() if n.startswith(prefix)]

    def load(self, i: int) -> nn.Module:
        prefix = layer_prefix(i)
        names = self.layer_names(i)
        if not names:
            raise ValueError(f"the checkpoint has no weights for layer {i}")
        h = self.hidden_size

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name in names:
                yield "model.layers.0." + name[len(prefix):], self.source.get(name).float()
            yield "model.embed_tokens.weight", torch.zeros(1, h)
            yield "model.norm.weight", torch.ones(h)

        self._model.load_weights(stream())
        return self._model.model.layers[0]

    def batches(self, num_windows: int) -> Iterator[tuple[int, int]]:
        for start in range(0, num_windows, self.batch_size):
            yield start, min(start + self.batch_size, num_windows)

    def _context(self, num_seqs: int) -> tuple[ForwardContext, torch.Tensor]:
        return prefill_context(num_seqs, self.seq_len, 1, self.num_kv_heads, self.head_dim, torch.float32, self.device)

    @torch.no_grad()
    def forward(self, layer: nn.Module, hidden: torch.Tensor,
                observe: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """hidden [S, L, H] (the residual stream entering the layer) -> the stream leaving it.
        observe(start, end) is called before each batch of windows (hooks can note which rows)."""
        out = torch.empty_like(hidden)
        for start, end in self.batches(hidden.shape[0]):
            if observe is not None:
                observe(start, end)
            context, positions = self._context(end - start)
            x = hidden[start:end].reshape(-1, hidden.shape[-1])
            with set_forward_context(context):
                y, residual = layer(positions, x, None)
            out[start:end] = (y + residual).view(end - start, self.seq_len, -1)
        return out


def prefill_context(num_seqs: int, seq_len: int, num_layers: int, num_kv_heads: int, head_dim: int,
                    dtype: torch.dtype, device: torch.device) -> tuple[ForwardContext, torch.Tensor]:
    """A forward context for num_seqs fresh sequences of seq_len tokens each, prefilled in one
    step (packed back to back), with a private paged cache per layer; and their positions."""
    blocks_per_seq = -(-seq_len // BLOCK_SIZE)
    num_blocks = num_seqs * blocks_per_seq
    caches = [torch.empty(2, num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)
              for _ in range(num_layers)]
    table = torch.arange(num_blocks, dtype=torch.int32, device=device).view(num_seqs, blocks_per_seq)
    slots = (table.long()[:, :, None] * BLOCK_SIZE + torch.arange(BLOCK_SIZE, device=device)).view(num_seqs, -1)
    starts = [i * seq_len for i in range(num_seqs + 1)]
    metadata = AttentionMetadata(
        num_seqs=num_seqs, num_tokens=num_seqs * seq_len,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device=device),
        block_table=table, slot_mapping=slots[:, :seq_len].reshape(-1).contiguous(),
        max_query_len=seq_len, max_seq_len=seq_len,
        query_start_loc_cpu=starts, seq_lens_cpu=[seq_len] * num_seqs,
    )
    positions = torch.arange(seq_len, device=device).repeat(num_seqs)
    return ForwardContext(attn_metadata=metadata, kv_caches=caches), positions


def linear_modules(layer: nn.Module) -> dict[str, nn.Module]:
    return {name: layer.get_submodule(name) for name in LINEARS}


class InputObserver:
    """Forward hooks on a layer's linears: Hessians (X^T X, for GPTQ), mean |x| per channel and
    a fixed random subset of input rows (for AWQ's searches), accumulated over all batches."""

    def __init__(self, layer: nn.Module, hessian: bool, keep_rows: int, seed: int = 0):
        self.hessian, self.keep_rows = hessian, keep_rows
        self.h: dict[str, torch.Tensor] = {}
        self.abs_sum: dict[str, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.count: dict[str, int] = {}
        self._gen = torch.Generator().manual_seed(seed)
        self._rows_per_batch = 0
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linear_modules(layer).items()]

    def plan(self, num_windows: int, batch_windows: int, seq_len: int) -> None:
        batches = -(-num_windows // batch_windows)
        self._rows_per_batch = -(-self.keep_rows // batches) if self.keep_rows else 0

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            if self.hessian:
                h = x.t() @ x
                self.h[name] = self.h[name] + h if name in self.h else h
            self.abs_sum[name] = self.abs_sum.get(name, 0) + x.abs().sum(0)
            self.count[name] = self.count.get(name, 0) + x.shape[0]
            if self._rows_per_batch:
                picks = torch.randperm(x.shape[0], generator=self._gen)[: self._rows_per_batch].to(x.device)
                self.rows.setdefault(name, []).append(x[picks])

        return hook

    def mean_abs(self, name: str) -> torch.Tensor:
        return self.abs_sum[name] / self.count[name]

    def sample(self, name: str) -> torch.Tensor:
        return torch.cat(self.rows[name])

    def hessian_of(self, name: str) -> torch.Tensor:
        """2/n X^T X, GPTQ's H."""
        return self.h[name] * (2.0 / self.count[name])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
