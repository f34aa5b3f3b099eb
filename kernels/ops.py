"""Kernel entry points: check shapes, dtypes and devices, then dispatch to a Triton kernel
(`triton/`) or the pure-torch `reference`.

Backend choice, per call, from the tensors' device and the process-wide setting
(`LOCALLLM_KERNELS` in the environment, or `use_backend(...)`):
  auto (default)  Triton on CUDA tensors; on float32 CPU tensors the C decode kernels
                  (cpu_native: rms_norm, silu_and_mul, neox rotary, the KV store, decode-only
                  attention) where they could be built; the reference elsewhere;
  triton          Triton everywhere (CPU tensors need TRITON_INTERPRET=1: tests only);
  reference       the reference everywhere (the GPU parity oracle).
Checks read only tensor metadata: nothing here syncs with the device, so every op can be
captured in a CUDA graph.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator

import torch

from . import cpu_native, reference

BACKENDS = ("auto", "triton", "reference")
_backend = os.environ.get("LOCALLLM_KERNELS", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"LOCALLLM_KERNELS must be one of {', '.join(BACKENDS)}, got {_backend!r}")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops of a block on one backend (tests, parity runs)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def uses_triton(device: torch.device) -> bool:
    """Whether ops on tensors of `device` run the Triton kernels under the current setting."""
    if _backend == "reference":
        return False
    if _backend == "triton":
        return True
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return device_type == "cuda" and triton_available()


def _native(*tensors: torch.Tensor) -> bool:
    """Whether this call runs the C CPU kernels (auto backend, float32 CPU tensors, library built)."""
    return _backend == "auto" and cpu_native.usable(*tensors)


def _check(condition: bool, message: str | Callable[[], str]) -> None:
    """Raise ValueError(message) unless condition. A message that formats shapes comes as a
    lambda: these checks run on every op of every layer, and on the CPU decode path eager
    f-strings cost more than some of the ops they guard."""
    if not condition:
        raise ValueError(message() if callable(message) else message)


def _check_kv_cache(kv_cache: torch.Tensor) -> None:
    _check(
        kv_cache.dim() == 5 and kv_cache.shape[0] == 2,
        lambda: f"kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_size], got {tuple(kv_cache.shape)}",
    )
    _check(kv_cache.is_contiguous(), "kv_cache must be contiguous")


def store_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [T, Hkv, D] into kv_cache [2, num_blocks, block_size, Hkv, D] at
    slot_mapping int64 [T] (slot = block_id * block_size + offset), in place. On the Triton path
    a negative slot writes nothing (CUDA-graph padding rows)."""
    _check_kv_cache(kv_cache)
    num_kv_heads, head_size = kv_cache.shape[3:]
    _check(key.dim() == 3 and tuple(key.shape[1:]) == (num_kv_heads, head_size),
           lambda: f"key must be [T, {num_kv_heads}, {head_size}], got {tuple(key.shape)}")
    _check(value.shape == key.shape, lambda: f"value {tuple(value.shape)} must match key {tuple(key.shape)}")
    _check(slot_mapping.dtype == torch.int64 and slot_mapping.shape == (key.shape[0],),
           lambda: f"slot_mapping must be int64 [{key.shape[0]}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    _check(key.device == kv_cache.device == slot_mapping.device, "key, kv_cache and slot_mapping must share a device")
    _check(key.stride(-1) == 1 and value.stride(-1) == 1, "key and value must be contiguous in their last dim")
    if uses_triton(kv_cache.device):
        from .triton import kv_store

        kv_store.store_kv_cache(key, value, kv_cache, slot_mapping)
        return
    if _native(key, value, kv_cache) and key.stride(1) == value.stride(1) == head_size:
        cpu_native.store_kv(key, value, kv_cache, slot_mapping)
        return
    reference.store_kv_cache(key, value, kv_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    query_start_loc_cpu: list[int],
    seq_lens_cpu: list[int],
) -> torch.Tensor:
    """Causal attention of query [T, Hq, D] over the paged cache -> [T, Hq, D].

    Semantics: localllm.forward_context.AttentionMetadata. block_table entries past a sequence's
    last block are padding: any valid block id (the runner uses 0); they are masked out.
    max_seq_len may be any upper bound of seq_lens (CUDA graphs pass max_model_len); on the Triton
    path a decode row with seq_len 0 is padding and comes out as zeros.
    """
    _check_kv_cache(kv_cache)
    num_kv_heads, head_size = kv_cache.shape[3:]
    _check(query.dim() == 3 and query.shape[2] == head_size,
           lambda: f"query must be [T, Hq, {head_size}], got {tuple(query.shape)}")
    _check(query.shape[1] % num_kv_heads == 0,
           lambda: f"query heads ({query.shape[1]}) must be a multiple of kv heads ({num_kv_heads})")
    num_seqs = len(seq_lens_cpu)
    _check(len(query_start_loc_cpu) == num_seqs + 1, "query_start_loc_cpu must have num_seqs + 1 entries")
    _check(query_start_loc_cpu[-1] == query.shape[0],
           lambda: f"query_start_loc_cpu[-1] ({query_start_loc_cpu[-1]}) must equal the number of tokens ({query.shape[0]})")
    _check(query_start_loc.dtype == torch.int32 and query_start_loc.shape == (num_seqs + 1,),
           lambda: f"query_start_loc must be int32 [{num_seqs + 1}]")
    _check(seq_lens.dtype == torch.int32 and seq_lens.shape == (num_seqs,), lambda: f"seq_lens must be int32 [{num_seqs}]")
    _check(block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == num_seqs,
           lambda: f"block_table must be int32 [{num_seqs}, max_blocks], got {block_table.dtype} {tuple(block_table.shape)}")
    _check(block_table.shape[1] * kv_cache.shape[2] >= max_seq_len,
           lambda: f"block_table has {block_table.shape[1]} blocks per row, too few for max_seq_len {max_seq_len}")
    _check(max_query_len >= 1 and max_seq_len >= max_query_len, "need 1 <= max_query_len <= max_seq_len")
    _check(max_query_len > 1 or query.shape[0] == num_seqs, "a decode-only batch has one token per sequence")
    _check(query.stride(-1) == 1, "query must be contiguous in its last dim")
    if uses_triton(query.device):
        if max_query_len == 1:
            from .triton import attention_decode

            return attention_decode.paged_attention_decode(query, kv_cache, seq_lens, block_table, scale, max_seq_len)
        from .triton import attention_prefill

        return attention_prefill.paged_attention_prefill(
            query, kv_cache, query_start_loc, seq_lens, block_table, scale, max_query_len, max_seq_len
        )
    # a bfloat16 cache (CacheConfig.kv_cache_dtype) is read by the same C kernel, widened as it goes
    if (max_query_len == 1 and _native(query) and kv_cache.device.type == "cpu"
            and kv_cache.dtype in (torch.float32, torch.bfloat16) and query.stride(1) == head_size):
        return cpu_native.decode_attention(query, kv_cache, seq_lens, block_table, scale)
    return reference.paged_attention(
        query, kv_cache, query_start_loc, seq_lens, block_table, scale,
        max_query_len, max_seq_len, query_start_loc_cpu, seq_lens_cpu,
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [..., H] with weight [H]; with residual, fused add first and returns
    (out, new_residual) where new_residual = x + residual."""
    _check(weight.dim() == 1 and x.shape[-1] == weight.shape[0],
           lambda: f"weight [{weight.shape[0] if weight.dim() else '?'}] must match x's last dim {x.shape[-1]}")
    _check(residual is None or residual.shape == x.shape,
           lambda: f"residual {None if residual is None else tuple(residual.shape)} must match x {tuple(x.shape)}")
    _check(x.stride(-1) == 1, "x must be contiguous in its last dim")
    if uses_triton(x.device):
        from .triton import rms_norm as triton_rms_norm

        return triton_rms_norm.rms_norm(x, weight, eps, residual)
    if _native(x, weight) and (residual is None or _native(residual)):
        return cpu_native.rms_norm(x, weight, eps, residual)
    return reference.rms_norm(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of query [T, Hq*D] and key [T, Hkv*D] at positions int64 [T];
    cos_sin_cache [max_position, rot_dim] (cos then sin halves). Returns (query, key): the
    Triton path rotates in place and returns its inputs, the reference returns new tensors, so
    callers use the returned tensors and must not rely on the inputs either way."""
    num_tokens = positions.shape[0]
    _check(positions.dim() == 1 and positions.dtype == torch.int64, "positions must be int64 [T]")
    _check(query.dim() == 2 and query.shape[0] == num_tokens and query.shape[1] % head_size == 0,
           lambda: f"query must be [{num_tokens}, Hq * {head_size}], got {tuple(query.shape)}")
    _check(key.dim() == 2 and key.shape[0] == num_tokens and key.shape[1] % head_size == 0,
           lambda: f"key must be [{num_tokens}, Hkv * {head_size}], got {tuple(key.shape)}")
    rot_dim = cos_sin_cache.shape[-1]
    _check(cos_sin_cache.dim() == 2 and rot_dim % 2 == 0 and rot_dim <= head_size,
           lambda: f"cos_sin_cache must be [max_position, rot_dim <= {head_size}], got {tuple(cos_sin_cache.shape)}")
    if uses_triton(query.device):
        _check(query.stride(-1) == 1 and key.stride(-1) == 1, "query and key must be contiguous in their last dim")
        from .triton import rotary

        return rotary.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox_style)
    if is_neox_style and _native(query, key, cos_sin_cache):
        return cpu_native.rotary_neox(positions, query, key, head_size, cos_sin_cache)
    return reference.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox_style)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [R, V] -> int64 [R]: torch.argmax(logits, dim=-1), the first largest value of each row
    (NaN counts as the largest), in C on the CPU (torch's is scalar there)."""
    if logits.dim() == 2 and logits.shape[1] > 0 and _native(logits):
        return cpu_native.argmax_rows(logits)
    return logits.argmax(dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] of shape [..., I]."""
    _check(x.shape[-1] % 2 == 0, lambda: f"last dim must be even, got {x.shape[-1]}")
    if uses_triton(x.device):
        _check(x.stride(-1) == 1, "x must be contiguous in its last dim")
        from .triton import activation

        return activation.silu_and_mul(x)
    if _native(x):
        return cpu_native.silu_and_mul(x)
    return reference.silu_and_mul(x)


def w4a16_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int = 4
) -> torch.Tensor:
    """x [M, K] @ dequant(W)^T -> [M, N] in x's dtype, for integer weights in the engine's packed
    layout (localllm.quant.formats.runtime): qweight int32 [K * bits / 32, N] packed along K,
    scales [K / group_size, N] in x's dtype, zeros uint8 [K / group_size, N]; bits 2, 4 or 8."""
    _check(bits in (2, 4, 8), lambda: f"bits must be 2, 4 or 8, got {bits}")
    _check(x.dim() == 2, lambda: f"x must be [M, K], got {tuple(x.shape)}")
    num_rows, in_features = x.shape
    per_word = 32 // bits
    _check(qweight.dtype == torch.int32 and qweight.dim() == 2 and qweight.shape[0] * per_word == in_features,
           lambda: f"qweight must be int32 [{in_features // per_word}, N], got {qweight.dtype} {tuple(qweight.shape)}")
    out_features = qweight.shape[1]
    _check(group_size >= 1 and in_features % group_size == 0, lambda: f"group_size {group_size} must divide K = {in_features}")
    groups = in_features // group_size
    _check(scales.shape == (groups, out_features) and scales.dtype == x.dtype,
           lambda: f"scales must be {x.dtype} [{groups}, {out_features}], got {scales.dtype} {tuple(scales.shape)}")
    _check(zeros.shape == (groups, out_features) and zeros.dtype == torch.uint8,
           lambda: f"zeros must be uint8 [{groups}, {out_features}], got {zeros.dtype} {tuple(zeros.shape)}")
    _check(x.device == qweight.device == scales.device == zeros.device, "x and the weights must share a device")
    if uses_triton(x.device):
        _check(qweight.is_contiguous() and scales.is_contiguous() and zeros.is_contiguous(),
               "qweight, scales and zeros must be contiguous")
        from .triton import w4a16

        return w4a16.w4a16_matmul(x, qweight, scales, zeros, group_size, bits)
    return reference.w4a16_matmul(x, qweight, scales, zeros, group_size, bits)


def _check_fp8_operands(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None) -> None:
    """The FP8 linears' shared contract: x [M, K], W [N, K] float8_e4m3fn (or float32 holding FP8
    values), weight_scale float32 [N], bias [N] or None."""
    _check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1],
           lambda: f"x [M, K] and weight [N, K] must agree on K, got {tuple(x.shape)} and {tuple(weight.shape)}")
    _check(weight.dtype in (torch.float8_e4m3fn, torch.float32),
           lambda: f"weight must be float8_e4m3fn (or float32 FP8 values), got {weight.dtype}")
    _check(weight_scale.dtype == torch.float32 and weight_scale.shape == (weight.shape[0],),
           lambda: f"weight_scale must be float32 [{weight.shape[0]}], got {weight_scale.dtype} {tuple(weight_scale.shape)}")
    _check(bias is None or bias.shape == (weight.shape[0],), lambda: f"bias must be [{weight.shape[0]}]")


def fp8_weight_only_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ (W * scales)^T (+ bias) in x's dtype, activations left as they are (W8A16): W
    float8_e4m3fn [N, K] (or float32 holding FP8 values, the CPU layer's cache) with per-channel
    weight_scale float32 [N]. On CUDA the W4A16 kernels dequantize the FP8 weights in registers."""
    _check_fp8_operands(x, weight, weight_scale, bias)
    if weight.dtype == torch.float8_e4m3fn and uses_triton(x.device):
        _check(weight.is_contiguous() and weight_scale.is_contiguous(), "weight and weight_scale must be contiguous")
        from .triton import w4a16

        y = w4a16.fp8_w8a16_matmul(x, weight, weight_scale)
        return y if bias is None else (y.float() + bias.float()).to(x.dtype)
    return reference.fp8_weight_only_linear(x, weight, weight_scale, bias)


@functools.cache
def _cuda_has_fp8(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 9)


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` multiplies FP8 natively (CUDA compute capability 8.9+: Ada, Hopper, ...)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return _cuda_has_fp8(device.index if device.index is not None else torch.cuda.current_device())


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = quant8(x) @ W^T * scales (+ bias) in x's dtype; W float8_e4m3fn [N, K] (or float32
    holding FP8 values, the CPU layer's cache) with per-channel weight_scale float32 [N];
    activations quantized per token at run time, or with a static per-tensor input_scale.
    On CUDA cards with FP8 (and not under LOCALLLM_KERNELS=reference) torch._scaled_mm runs it."""
    _check_fp8_operands(x, weight, weight_scale, bias)
    _check(input_scale is None or input_scale.numel() == 1, "input_scale must be one per-tensor scale")
    if (_backend != "reference" and weight.dtype == torch.float8_e4m3fn and fp8_supported(x.device)
            and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0):
        xq, x_scale = reference.quantize_fp8_per_token(x, input_scale)
        # NOTE: row-wise scales (one per token, one per channel) need a bfloat16 output.
        y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale.contiguous(), scale_b=weight_scale.view(1, -1),
                             out_dtype=torch.bfloat16)
        if bias is not None:
            y = y + bias
        return y.to(x.dtype)
    return reference.fp8_linear(x, weight, weight_scale, input_scale, bias)
