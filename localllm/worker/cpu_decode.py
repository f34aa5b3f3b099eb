"""The CPU decode fast path: a Llama-family model with int4 bodies (the int4 quantization) runs
its decode steps as a flat loop of calls, one per step of each layer, instead of the modules.

Why: a small model's decode step on a CPU is bound by calls, not arithmetic. Through the modules
a layer makes ~60 torch calls (module dispatch, shape checks, dtype conversions around every
int4 matmul) and spends about twice as long around its four matmuls as in them. Here a layer is
seven calls: the four int4 matmuls (bfloat16 in and out, as in Int4CPULinear) and three C kernels
(kernels/cpu/decode_ops.c) for what lies between them, which read the matmuls' bfloat16 outputs
and write the next matmul's bfloat16 input directly.

Invariant: the same parameters, the same kernels and the same conversions in the same order as
the module path, so both give the same bits (tests/worker/test_cpu_decode.py checks it); this
file only skips the Python between them. Prefill and every other case run the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from localllm.forward_context import AttentionMetadata
from localllm.kernels import cpu_native, ops
from localllm.layers.int4_cpu_linear import Int4CPULinear

_int4_mm = torch.ops.aten._weight_int4pack_mm_for_cpu if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") else None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ok(status: int) -> None:
    """The step kernels return -1 when malloc fails for their scratch (a few KB per token)."""
    if status != 0:
        raise MemoryError("a CPU decode kernel could not allocate its scratch memory")


@dataclass
class _Layer:
    input_norm: torch.Tensor  # RMSNorm weights, float32 [H]
    post_norm: torch.Tensor
    qkv: Int4CPULinear
    o: Int4CPULinear
    gate_up: Int4CPULinear
    down: Int4CPULinear
    layer_idx: int


class CPUDecodePath:
    """forward(input_ids int64 [T], positions int64 [T], metadata, kv_caches) -> hidden float32
    [T, H], the module path's final-norm output, for a batch with one query token per sequence."""

    def __init__(self, model) -> None:
        inner = model.model
        self.embedding = inner.embed_tokens.weight
        first = inner.layers[0]
        attention = first.self_attn
        self.hidden_size = self.embedding.shape[1]
        self.eps = float(first.input_layernorm.eps)
        self.final_norm = inner.norm.weight
        self.num_heads, self.num_kv_heads, self.head_size = attention.num_heads, attention.num_kv_heads, attention.head_dim
        self.scale = float(attention.attn.scale)
        self.cos_sin = attention.rotary_emb.cos_sin_cache
        self.intermediate = first.mlp.gate_up_proj.out_features // 2
        self.layers = [
            _Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, layer.self_attn.qkv_proj,
                   layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj, layer.self_attn.attn.layer_idx)
            for layer in inner.layers
        ]
        self._lib = cpu_native.library()

    @classmethod
    def build(cls, model) -> "CPUDecodePath | None":
        """The fast path for `model`, or None when it does not apply (any part the kernels or
        this loop do not cover: then the modules run every step, as before)."""
        from localllm.models.llama import LlamaForCausalLM

        if _int4_mm is None or cpu_native.library() is None or not isinstance(model, LlamaForCausalLM):
            return None
        inner = model.model
        floats = [inner.embed_tokens.weight, inner.norm.weight]
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            linears = (attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj)
            if not all(isinstance(linear, Int4CPULinear) for linear in linears) or attention.q_norm is not None:
                return None
            if not attention.rotary_emb.is_neox_style:
                return None
            floats += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                       attention.rotary_emb.cos_sin_cache]
            floats += [linear.bias for linear in linears if linear.bias is not None]
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in floats):
            return None
        return cls(model)

    def applies(self, metadata: AttentionMetadata, kv_caches: list[torch.Tensor]) -> bool:
        return (metadata.max_query_len == 1 and ops.get_backend() == "auto"
                and kv_caches[0].dtype == torch.float32 and kv_caches[0].is_contiguous())

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
                kv_caches: list[torch.Tensor]) -> torch.Tensor:
        lib, tokens, hidden = self._lib, input_ids.shape[0], self.hidden_size
        positions = positions.contiguous()
        slots = metadata.slot_mapping.contiguous()
        seq_lens = metadata.seq_lens.contiguous()
        block_table = metadata.block_table.contiguous()
        step = (positions.data_ptr(), _ptr(self.cos_sin), self.cos_sin.shape[1])
        tables = (slots.data_ptr(), block_table.data_ptr(), block_table.stride(0), seq_lens.data_ptr())
        _, num_blocks, block_size = kv_caches[0].shape[:3]
        num_slots = num_blocks * block_size

        x = F.embedding(input_ids, self.embedding)
        residual = torch.empty((tokens, hidden), dtype=torch.float32)
        normed = torch.empty((tokens, hidden), dtype=torch.bfloat16)
        context = torch.empty((tokens, self.num_heads * self.head_size), dtype=torch.bfloat16)
        activated = torch.empty((tokens, self.intermediate), dtype=torch.bfloat16)
        # NOTE: layer 0's input norm reads the embedding (float32) with no residual to add; every
        # later norm adds the previous output to the residual stream, as the modules do.
        pending, pending_bf16, pending_bias, add = x, 0, None, 0
        for layer in self.layers:
            _ok(lib.add_rms_norm_step(pending.data_ptr(), pending_bf16, pending.stride(0), pending_bias,
                                      residual.data_ptr(), add, layer.input_norm.data_ptr(), normed.data_ptr(), None,
                                      tokens, hidden, self.eps))
            qkv = _int4_mm(normed, layer.qkv.packed_weight, layer.qkv.group_size, layer.qkv.scales_and_zeros)
            _ok(lib.attention_step(
                qkv.data_ptr(), qkv.stride(0), _ptr(layer.qkv.bias), step[0], step[1], step[2],
                kv_caches[layer.layer_idx].data_ptr(), num_slots, tables[0], tables[1], tables[2], tables[3],
                context.data_ptr(), tokens, self.num_heads, self.num_kv_heads, self.head_size, block_size, self.scale,
            ))
            o = _int4_mm(context, layer.o.packed_weight, layer.o.group_size, layer.o.scales_and_zeros)
            _ok(lib.add_rms_norm_step(o.data_ptr(), 1, o.stride(0), _ptr(layer.o.bias), residual.data_ptr(), 1,
                                      layer.post_norm.data_ptr(), normed.data_ptr(), None, tokens, hidden, self.eps))
            gate_up = _int4_mm(normed, layer.gate_up.packed_weight, layer.gate_up.group_size,
                               layer.gate_up.scales_and_zeros)
            _ok(lib.silu_and_mul_step(gate_up.data_ptr(), gate_up.stride(0), _ptr(layer.gate_up.bias),
                                      activated.data_ptr(), tokens, self.intermediate))
            pending = _int4_mm(activated, layer.down.packed_weight, layer.down.group_size, layer.down.scales_and_zeros)
            pending_bf16, pending_bias, add = 1, _ptr(layer.down.bias), 1
        out = torch.empty((tokens, hidden), dtype=torch.float32)
        _ok(lib.add_rms_norm_step(pending.data_ptr(), pending_bf16, pending.stride(0), pending_bias, residual.data_ptr(),
                                  add, self.final_norm.data_ptr(), None, out.data_ptr(), tokens, hidden, self.eps))
        return out
