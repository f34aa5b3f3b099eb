"""Pure-torch definitions of every op: the ground truth for tests, and the CPU path.

Shapes follow vLLM. T tokens in a packed ragged batch, S sequences, Hq query heads, Hkv key/value
heads (Hq % Hkv == 0: query head h reads kv head h // (Hq // Hkv)), D head size.
KV cache of one layer: [2, num_blocks, block_size, Hkv, D]; [0] keys, [1] values.
No op here calls .item() or otherwise syncs with the device: host-side sizes come in as ints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """kv_cache[:, slot // block_size, slot % block_size] = key/value of each token, in place."""
    _, num_blocks, block_size, num_kv_heads, head_size = kv_cache.shape
    # NOTE: kv_cache is contiguous (checked in ops), so slots index a flat [num_slots, Hkv, D] view.
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_size)
    flat[0].index_copy_(0, slot_mapping, key.to(kv_cache.dtype))
    flat[1].index_copy_(0, slot_mapping, value.to(kv_cache.dtype))


def _gather_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor, num_blocks: int, seq_lens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the first num_blocks blocks of each row: two [S, Hkv, L, D], L = num_blocks * block_size.

    With seq_lens, slots at positions >= seq_lens[i] are zeroed: they may hold anything, NaN
    included (a fresh torch.empty cache), and a masked-out NaN still poisons softmax(QK^T)V.
    """
    block_size, num_kv_heads, head_size = kv_cache.shape[2:]
    blocks = block_table[:, :num_blocks]
    num_seqs, length = blocks.shape[0], num_blocks * block_size
    # NOTE: one gather for all sequences; entries past a sequence's last block are padding (any
    # valid block id) and are masked out by the caller.
    kv = kv_cache[:, blocks].view(2, num_seqs, length, num_kv_heads, head_size)  # a fresh copy
    if seq_lens is not None:
        invalid = torch.arange(length, device=kv.device)[None, :] >= seq_lens[:, None]
        kv.masked_fill_(invalid.view(1, num_seqs, length, 1, 1), 0.0)
    kv = kv.transpose(2, 3)
    return kv[0], kv[1]


class _StepMemo:
    """One value derived from a step's small input tensors, computed once and reused by every
    layer of the step (each layer passes the same block_table, seq_lens, positions).

    A hit needs the very same input tensors with unchanged contents (compared with copies taken
    at compute time: inference tensors keep no version counter, and a runner may rewrite its
    buffers in place), the same constant tensors (by identity: tables built once at load, never
    written after), and equal plain values. The memo holds the tensors themselves, so their ids
    cannot be reused while it lives.
    """

    def __init__(self) -> None:
        # (inputs, copies of inputs, constants, values, result), replaced whole: engines stepping
        # in two threads may race on the memo, but each reads one consistent entry.
        self._entry: tuple | None = None

    def get(self, inputs: tuple[torch.Tensor, ...], constants: tuple[torch.Tensor, ...], values: tuple, compute):
        entry = self._entry
        if (
            entry is not None
            and len(inputs) == len(entry[0])
            and all(a is b for a, b in zip(inputs + constants, entry[0] + entry[2]))
            and values == entry[3]
            and all(torch.equal(a, b) for a, b in zip(inputs, entry[1]))
        ):
            return entry[4]
        result = compute()
        self._entry = (inputs, tuple(t.clone() for t in inputs), constants, values, result)
        return result


_decode_memo = _StepMemo()
_rotary_memo = _StepMemo()


def _decode_slots_and_mask(
    block_table: torch.Tensor, seq_lens: torch.Tensor, seq_lens_cpu: list[int], length: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flat cache slots [S * L] that decode attention reads, and its mask [S, 1, 1, L] (None when
    every sequence is L long, which lets SDPA take its unmasked path)."""
    # Position p of sequence i reads slot block_table[i, p // bs] * bs + p % bs. Positions past a
    # sequence's end read its last written slot instead (finite, and masked out), so no slot of a
    # stale or fresh block (possibly NaN) ever reaches the softmax.
    positions = torch.arange(length, device=seq_lens.device)
    last = (seq_lens.long() - 1).clamp_min(0)
    clamped = torch.minimum(positions[None, :], last[:, None])
    blocks = block_table.long().gather(1, torch.div(clamped, block_size, rounding_mode="floor"))
    slots = (blocks * block_size + clamped % block_size).view(-1)
    mask = None
    if min(seq_lens_cpu) < length:
        mask = (positions[None, :] < seq_lens[:, None]).view(len(seq_lens_cpu), 1, 1, length)
    return slots, mask


def _decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    seq_lens_cpu: list[int],
    block_table: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """One query token per sequence, each at the last position: query [S, Hq, D] -> [S, Hq, D].
    Reads max_seq_len (>= every seq_len) positions per sequence."""
    num_seqs, num_heads, head_size = query.shape
    _, num_blocks, block_size, num_kv_heads, _ = kv_cache.shape
    slots, mask = _decode_memo.get(
        (block_table, seq_lens), (), (tuple(seq_lens_cpu), max_seq_len, block_size),
        lambda: _decode_slots_and_mask(block_table, seq_lens, seq_lens_cpu, max_seq_len, block_size),
    )
    # Keys and values in one gather: [2, S * L, Hkv * D] -> two [S, Hkv, L, D]; one row copy per
    # position, no per-block padding.
    gathered = kv_cache.view(2, num_blocks * block_size, num_kv_heads * head_size).index_select(1, slots)
    key, value = gathered.view(2, num_seqs, max_seq_len, num_kv_heads, head_size).transpose(2, 3).unbind(0)
    # GQA: the G query heads sharing a kv head become G query rows of that head.
    q = query.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_size)
    out = F.scaled_dot_product_attention(q, key.to(q.dtype), value.to(q.dtype), attn_mask=mask, scale=scale)
    return out.reshape(num_seqs, num_heads, head_size)


def _prefill_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_row: torch.Tensor,
    seq_len: int,
    scale: float,
) -> torch.Tensor:
    """One sequence's chunk of query_len tokens, the last of its seq_len: [Q, Hq, D] -> [Q, Hq, D]."""
    query_len, num_heads, head_size = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    num_blocks = (seq_len + block_size - 1) // block_size
    key, value = _gather_kv(kv_cache, block_row[None], num_blocks)
    key, value = key[0, :, :seq_len].to(query.dtype), value[0, :, :seq_len].to(query.dtype)  # [Hkv, L, D]
    group = num_heads // num_kv_heads
    if group > 1:
        key = key.repeat_interleave(group, dim=0)
        value = value.repeat_interleave(group, dim=0)
    q = query.transpose(0, 1)  # [Hq, Q, D]
    context_len = seq_len - query_len
    if context_len == 0:
        out = F.scaled_dot_product_attention(q, key, value, is_causal=True, scale=scale)
    else:
        # Query j sits at position context_len + j and sees keys at positions <= its own.
        q_pos = torch.arange(context_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


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
    """Causal attention of a packed ragged batch over the paged cache (see AttentionMetadata).

    query [T, Hq, D] -> out [T, Hq, D]. Sequence i owns query rows
    query_start_loc[i]:query_start_loc[i+1]; its query j sits at position seq_lens[i] - query_len_i + j
    and attends to cache positions <= its own. The cache already holds this step's keys/values.
    """
    if max_query_len == 1:
        # NOTE: decode-only batch: T == S, one gather + one batched SDPA, no per-sequence loop.
        # The host ints give the longest sequence exactly (max_seq_len may be any upper bound).
        return _decode_attention(query, kv_cache, seq_lens, seq_lens_cpu, block_table, scale, max(seq_lens_cpu))
    out = torch.empty_like(query)
    num_seqs = len(seq_lens_cpu)
    decode_rows = [i for i in range(num_seqs) if query_start_loc_cpu[i + 1] - query_start_loc_cpu[i] == 1]
    if len(decode_rows) > 1:
        # Mixed batch: the decoding sequences still go in one batched call.
        index = torch.tensor(decode_rows, device=query.device)
        token_index = torch.tensor([query_start_loc_cpu[i] for i in decode_rows], device=query.device)
        decode_lens = [seq_lens_cpu[i] for i in decode_rows]
        out[token_index] = _decode_attention(
            query[token_index], kv_cache, seq_lens[index], decode_lens, block_table[index], scale, max(decode_lens)
        )
        done = set(decode_rows)
    else:
        done = set()
    for i in range(num_seqs):
        if i in done:
            continue
        start, end = query_start_loc_cpu[i], query_start_loc_cpu[i + 1]
        if end == start:
            continue
        out[start:end] = _prefill_attention(query[start:end], kv_cache, block_table[i], seq_lens_cpu[i], scale)
    return out


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim, in float32, as HF Llama does it (normalize, cast back, then scale).

    With residual: new_residual = x + residual; returns (norm(new_residual) * weight, new_residual).
    """
    if residual is not None:
        x = x + residual
        residual = x
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        # torch's fused op computes the same float32 expression (tests check it bit for bit), in
        # one call instead of six small ones: the CPU decode path is bound by op count.
        out = torch.rms_norm(x, (x.shape[-1],), weight, eps)
        return out if residual is None else (out, residual)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(dtype)
    return out if residual is None else (out, residual)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first rot_dim dims of every head of query [T, Hq*D] and key [T, Hkv*D].

    cos_sin_cache[p] = cat(cos(p * inv_freq), sin(p * inv_freq)), rot_dim = 2 * len(inv_freq).
    Neox style (HF Llama's rotate_half) pairs dim i with i + rot_dim/2; GPT-J style pairs 2i, 2i+1.
    Returns new tensors of the input shapes; the inputs are left unchanged.
    """
    tables = _rotary_memo.get(
        (positions,), (cos_sin_cache,), (query.dtype, is_neox_style),
        lambda: _rotary_tables(positions, cos_sin_cache, query.dtype, is_neox_style),
    )
    joined = _adjacent_columns(query, key)
    if joined is not None:
        # q and k side by side in one buffer (slices of the qkv projection): one pass over both.
        rotated = _rotate(joined, tables, head_size, is_neox_style)
        return rotated[:, : query.shape[1]], rotated[:, query.shape[1] :]
    return _rotate(query, tables, head_size, is_neox_style), _rotate(key, tables, head_size, is_neox_style)


def _adjacent_columns(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor | None:
    """The [T, A + B] view spanning left [T, A] and right [T, B] when right's columns follow
    left's in the same rows of one buffer (e.g. q and k split from qkv); otherwise None."""
    if left.dim() != 2 or right.dim() != 2 or left.shape[0] != right.shape[0] or left.dtype != right.dtype:
        return None
    if left.stride(1) != 1 or right.stride(1) != 1 or left.stride(0) != right.stride(0):
        return None
    if left.untyped_storage().data_ptr() != right.untyped_storage().data_ptr():
        return None
    if right.storage_offset() != left.storage_offset() + left.shape[1]:
        return None
    if left.shape[0] > 1 and left.stride(0) < left.shape[1] + right.shape[1]:
        return None  # rows overlap: not two column blocks of one matrix
    return left.as_strided((left.shape[0], left.shape[1] + right.shape[1]), left.stride())


def _rotary_tables(
    positions: torch.Tensor, cos_sin_cache: torch.Tensor, dtype: torch.dtype, is_neox_style: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token multipliers [T, 1, rot_dim]. Neox: (cat(cos, cos), cat(-sin, sin)), so that
    rotated = x * first + cat(x2, x1) * second, which is x1*cos - x2*sin, x2*cos + x1*sin exactly
    (negation is exact). GPT-J: the (cos, sin) halves [T, 1, rot_dim / 2]."""
    cos_sin = cos_sin_cache.index_select(0, positions)  # [T, rot_dim]
    cos, sin = cos_sin.to(dtype).unsqueeze(1).chunk(2, dim=-1)
    if is_neox_style:
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
    return cos, sin


def _rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor], head_size: int, is_neox_style: bool) -> torch.Tensor:
    num_tokens = x.shape[0]
    x = x.reshape(num_tokens, -1, head_size)
    first, second = tables
    rot_dim = first.shape[-1] if is_neox_style else 2 * first.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    if is_neox_style:
        x1, x2 = x_rot.chunk(2, dim=-1)
        rotated = x_rot * first + torch.cat((x2, x1), dim=-1) * second
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = torch.stack((x1 * first - x2 * second, x2 * first + x1 * second), dim=-1).flatten(-2)
    if x_pass.shape[-1]:
        rotated = torch.cat((rotated, x_pass), dim=-1)
    return rotated.reshape(num_tokens, -1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# --------------------------------------------------------------------------- quantized linears

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)  # vLLM's floor: an all-zero row still gets a finite scale


def dequantize_w4a16(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int) -> torch.Tensor:
    """W^T float32 [K, N] = (q - zeros[k // g]) * scales[k // g]; q unpacked from qweight int32
    [K * bits / 32, N] (row k at bits (k % P) * bits of word k // P, P = 32 / bits)."""
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=qweight.device, dtype=torch.int32) * bits
    q = (qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)  # [K / P, P, N]
    q = q.reshape(-1, qweight.shape[1]).float()
    z = zeros.float().repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return (q - z) * s


def w4a16_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int
) -> torch.Tensor:
    """x [M, K] @ W^T [K, N] -> [M, N] in x's dtype. The dequantized weight is rounded to x's
    dtype (what the Triton kernel feeds its dot), the products accumulate in float32."""
    w_t = dequantize_w4a16(qweight, scales, zeros, group_size, bits).to(x.dtype).float()
    return (x.float() @ w_t).to(x.dtype)


def fp8_weight_only_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """W8A16 FP8: x (not quantized) times the FP8 weight [N, K] (or float32 holding FP8 values)
    dequantized with per-channel weight_scale float32 [N] and rounded to x's dtype (what the
    Triton kernel feeds its products); accumulated in float32, output in x's dtype."""
    w = (weight.float() * weight_scale.float().view(-1, 1)).to(x.dtype).float()
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def quantize_fp8_per_token(x: torch.Tensor, input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], float32 scales [M, 1]): scale = max|row| / 448 per token
    (dynamic), or the given static per-tensor input_scale for every row."""
    xf = x.float()
    if input_scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(FP8_MIN_SCALE)
    else:
        scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8 FP8: x quantized per token (or with a static scale), times the FP8 weight [N, K] with
    per-channel weight_scale float32 [N]; products exact, accumulated in float32. weight may also
    be float32 holding the FP8 values (the CPU layer keeps them upcast once). Output in x's dtype."""
    xq, x_scale = quantize_fp8_per_token(x, input_scale)
    y = (xq.float() @ weight.float().t()) * x_scale * weight_scale.float().view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
