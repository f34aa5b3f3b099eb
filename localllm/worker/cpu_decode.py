"""The CPU decode fast path: a Llama-family model with int4 bodies (the int4 quantization) runs
its decode steps as a flat loop of calls, one per step of each layer, instead of the modules.

Why: a small model's decode step on a CPU is bound by calls, not arithmetic. Through the modules
a layer makes ~60 torch calls (module dispatch, shape checks, dtype conversions around every
int4 matmul) and spends about twice as long around its four matmuls as in them. Here a layer is
seven calls: the four int4 matmuls (Int4CPULinear.project: bfloat16 in; float32 out from our kernel,
bfloat16 from torch's) and three C kernels (kernels/cpu/decode_ops.c) for what lies between them,
which read the matmuls' outputs and write the next matmul's bfloat16 input directly.

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

def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _is_bf16(t: torch.Tensor) -> int:
    return int(t.dtype == torch.bfloat16)


def _ok(status: int) -> None:
    """The step kernels return -1 when malloc fails for their scratch (a few KB per token)."""
    if status != 0:
        raise MemoryError("a CPU decode kernel could not allocate its scratch memory")


@dataclass
class _Layer:
    input_norm: torch.Tensor  # RMSNorm weights, float32 [H]
    post_norm: torch.Tensor
    qkv: "_Projection"
    o: "_Projection"
    gate_up: "_Projection"
    down: "_Projection"
    layer_idx: int


class _Projection:
    """One Int4CPULinear as the flat loop calls it: into(x bf16 [T, K] contiguous, out float32 [T, N])
    for our kernel, a direct C call with the weights' pointers resolved once (~2 us against ~6 us
    through cpu_qgemm.int4_mm's checks, for 120 calls per step); else linear.project(x).
    Invariant: it holds the packed tensors it points into, so they outlive every call."""

    def __init__(self, linear: Int4CPULinear, lib) -> None:
        self.linear, self.packed = linear, linear.packed
        self.out_features = linear.out_features
        if self.packed is not None:
            p = self.packed
            self._call = lib.qgemm_int4
            self._args = (p.codes.data_ptr(), p.scale_zero.data_ptr())
            self._shape = (p.out_features, p.in_features, p.group_size)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None, threads: int) -> torch.Tensor:
        if self.packed is None:
            return self.linear.project(x)
        n, k, group = self._shape
        _ok(self._call(x.data_ptr(), k, self._args[0], self._args[1], out.data_ptr(), 0, n, x.shape[0], n, k, group,
                       threads))
        return out


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
        self._lib = lib = cpu_native.library()
        self.layers = [
            _Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                   _Projection(layer.self_attn.qkv_proj, lib), _Projection(layer.self_attn.o_proj, lib),
                   _Projection(layer.mlp.gate_up_proj, lib), _Projection(layer.mlp.down_proj, lib),
                   layer.self_attn.attn.layer_idx)
            for layer in inner.layers
        ]

    @classmethod
    def build(cls, model) -> "CPUDecodePath | None":
        """The fast path for `model`, or None when it does not apply (any part the kernels or
        this loop do not cover: then the modules run every step, as before)."""
        from localllm.models.llama import LlamaForCausalLM

        if cpu_native.library() is None or not isinstance(model, LlamaForCausalLM):
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
            first = inner.layers[0]
            firsts = (first.self_attn.qkv_proj, first.self_attn.o_proj, first.mlp.gate_up_proj, first.mlp.down_proj)
            # forward reuses one output buffer per projection across the layers
            if any(a.out_features != b.out_features or (a.packed is None) != (b.packed is None)
                   for a, b in zip(linears, firsts)):
                return None
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in floats):
            return None
        return cls(model)

    def applies(self, metadata: AttentionMetadata, kv_caches: list[torch.Tensor]) -> bool:
        return (metadata.max_query_len == 1 and ops.get_backend() == "auto"
                and kv_caches[0].dtype in (torch.float32, torch.bfloat16) and kv_caches[0].is_contiguous())

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
        kv_bf16 = _is_bf16(kv_caches[0])
        num_slots = num_blocks * block_size

        x = F.embedding(input_ids, self.embedding)
        residual = torch.empty((tokens, hidden), dtype=torch.float32)
        normed = torch.empty((tokens, hidden), dtype=torch.bfloat16)
        context = torch.empty((tokens, self.num_heads * self.head_size), dtype=torch.bfloat16)
        activated = torch.empty((tokens, self.intermediate), dtype=torch.bfloat16)
        # Our kernel's float32 outputs: one buffer per projection, reused by every layer (each output
        # is read before the next layer's same projection overwrites it).
        first, threads = self.layers[0], torch.get_num_threads()
        qkv_out, o_out, gate_up_out, down_out = (
            torch.empty((tokens, p.out_features), dtype=torch.float32) if p.packed is not None else None
            for p in (first.qkv, first.o, first.gate_up, first.down))
        # NOTE: layer 0's input norm reads the embedding (float32) with no residual to add; every
        # later norm adds the previous output to the residual stream, as the modules do.
        pending, pending_bias, add = x, None, 0
        for layer in self.layers:
            _ok(lib.add_rms_norm_step(pending.data_ptr(), _is_bf16(pending), pending.stride(0), pending_bias,
                                      residual.data_ptr(), add, layer.input_norm.data_ptr(), normed.data_ptr(), None,
                                      tokens, hidden, self.eps))
            qkv = layer.qkv(normed, qkv_out, threads)
            _ok(lib.attention_step(
                qkv.data_ptr(), _is_bf16(qkv), qkv.stride(0), _ptr(layer.qkv.linear.bias), step[0], step[1], step[2],
                kv_caches[layer.layer_idx].data_ptr(), kv_bf16, num_slots, tables[0], tables[1], tables[2], tables[3],
                context.data_ptr(), tokens, self.num_heads, self.num_kv_heads, self.head_size, block_size, self.scale,
            ))
            o = layer.o(context, o_out, threads)
            _ok(lib.add_rms_norm_step(o.data_ptr(), _is_bf16(o), o.stride(0), _ptr(layer.o.linear.bias), residual.data_ptr(), 1,
                                      layer.post_norm.data_ptr(), normed.data_ptr(), None, tokens, hidden, self.eps))
            gate_up = layer.gate_up(normed, gate_up_out, threads)
            _ok(lib.silu_and_mul_step(gate_up.data_ptr(), _is_bf16(gate_up), gate_up.stride(0),
                                      _ptr(layer.gate_up.linear.bias), activated.data_ptr(), tokens, self.intermediate))
            pending = layer.down(activated, down_out, threads)
            pending_bias, add = _ptr(layer.down.linear.bias), 1
        out = torch.empty((tokens, hidden), dtype=torch.float32)
        _ok(lib.add_rms_norm_step(pending.data_ptr(), _is_bf16(pending), pending.stride(0), pending_bias, residual.data_ptr(),
                                  add, self.final_norm.data_ptr(), None, out.data_ptr(), tokens, hidden, self.eps))
        return out
