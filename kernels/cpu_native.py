"""The CPU kernels of cpu/ (decode_ops.c: the small ops of a decode step; decode_attention.c;
qgemm.c: the quantized-weight GEMM, wrapped by cpu_qgemm.py): built once per machine with the system
C compiler into one library, loaded through ctypes, called with tensors' data pointers.

The library is compiled for the host CPU (-march=native, OpenMP, about 3 s) into
$LOCALLLM_HOME/cpu_kernels/<key>.so, the key hashing the sources, the flags, the compiler and the
CPU's feature flags: a later process loads it in milliseconds, and a home shared between
different machines never loads a build for another CPU. With no compiler, a failed build, or
LOCALLLM_CPU_KERNELS=0, `library()` is None and ops use the torch reference instead.

Callers (kernels/ops.py) check shapes; the functions here check what the C code relies on
(float32, CPU, unit stride in the last dim, contiguous outputs it allocates itself).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SOURCES = tuple(Path(__file__).parent / "cpu" / name for name in ("decode_ops.c", "decode_attention.c", "qgemm.c"))
_HEADERS = (Path(__file__).parent / "cpu" / "common.h",)
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared")
# NOTE: OpenMP links libgomp.so.1, the soname of the copy torch ships and has already loaded, so the
# kernels' parallel regions run on torch's own thread team (two teams on one core set make libgomp
# stop spinning between regions: every op then waits for its threads to wake). A compiler without
# OpenMP builds the same source serially (the pragmas are ignored).
_OPENMP_FLAGS = ("-fopenmp",)
_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "rms_norm": ([_P, _I64, _P, _I64, _P, _P, _P, _I64, _I64, _F32], None),
    "silu_and_mul": ([_P, _I64, _P, _I64, _I64], None),
    "rotary_neox": ([_P, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I64], None),
    "store_kv": ([_P, _I64, _P, _I64, _P, _I64, _P, _I64, _I64], None),
    "decode_attention": ([_P, _I64, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I64, _F32, ctypes.c_int],
                         ctypes.c_int),
    "round_to_bf16": ([_P, _P, _I64], None),
    "argmax_rows": ([_P, _I64, _I64, _I64, _P], None),
    "quantize_int4_groups_f32": ([_P, _I64, _I64, _P, _P, _I64, _I64, _I64], None),
    "quantize_int8_groups_f32": ([_P, _I64, _I64, _P, _P, _I64, _I64, _I64], None),
    # the decode fast path (localllm/worker/cpu_decode.py)
    "add_rms_norm_step": ([_P, ctypes.c_int, _I64, _P, _P, ctypes.c_int, _P, _P, _P, _I64, _I64, _F32], ctypes.c_int),
    "silu_and_mul_step": ([_P, ctypes.c_int, _I64, _P, _P, _I64, _I64], ctypes.c_int),
    # quantized-weight GEMM (cpu/qgemm.c, wrapped by cpu_qgemm.py)
    "qgemm_available": ([], ctypes.c_int),
    "qgemm_pack_int4": ([_P, _I64, _I64, _P], None),
    "qgemm_pack_int8": ([_P, _I64, _I64, _P], None),
    "qgemm_int4": ([_P, _I64, _P, _P, _P, ctypes.c_int, _I64, _I64, _I64, _I64, _I64, ctypes.c_int], ctypes.c_int),
    "qgemm_int8": ([_P, _I64, _P, _P, _P, ctypes.c_int, _I64, _I64, _I64, _I64, _I64, ctypes.c_int], ctypes.c_int),
    "attention_step": ([_P, ctypes.c_int, _I64, _P, _P, _P, _I64, _P, ctypes.c_int, _I64, _P, _P, _I64, _P, _P, _I64, _I64,
                        _I64, _I64, _I64, _F32], ctypes.c_int),
}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(compiler: str) -> Path:
    from localllm.hub.resolve import localllm_home

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join([*(source.read_text() for source in _SOURCES + _HEADERS), " ".join(_FLAGS + _OPENMP_FLAGS), version,
                   platform.machine(), _cpu_flags()]).encode()
    ).hexdigest()[:20]
    directory = localllm_home() / "cpu_kernels"
    target = directory / f"decode_ops-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # NOTE: built under a temporary name and renamed: a process racing us loads a whole file or none.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        sources = [str(source) for source in _SOURCES]
        try:
            subprocess.run([compiler, *_FLAGS, *_OPENMP_FLAGS, *sources, "-o", partial, "-lm"], check=True,
                           capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError:
            logger.info("building the CPU kernels with OpenMP failed: building them single-threaded")
            subprocess.run([compiler, *_FLAGS, *sources, "-o", partial, "-lm"], check=True, capture_output=True,
                           text=True, timeout=120)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot be had (the reason is logged once)."""
    if os.environ.get("LOCALLLM_CPU_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found: CPU decode runs on torch ops (slower)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        logger.warning("building the CPU decode kernels failed, using torch ops instead: %s", detail)
        return None
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: float32 on the CPU, unit stride in the last dim."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in tensors) and (
        library() is not None
    )


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x [..., N] as [R, N] (a view when its leading dims collapse) and its row stride."""
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    return flat, flat.stride(0) if flat.shape[0] > 1 else flat.shape[1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None):
    rows, x_stride = _rows(x)
    hidden = x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype)
    weight = weight.contiguous()
    if residual is None:
        library().rms_norm(rows.data_ptr(), x_stride, None, 0, weight.data_ptr(), out.data_ptr(), None,
                           rows.shape[0], hidden, eps)
        return out
    residual_rows, residual_stride = _rows(residual)
    new_residual = torch.empty(x.shape, dtype=x.dtype)
    library().rms_norm(rows.data_ptr(), x_stride, residual_rows.data_ptr(), residual_stride, weight.data_ptr(),
                       out.data_ptr(), new_residual.data_ptr(), rows.shape[0], hidden, eps)
    return out, new_residual


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for x float32 [R, N] (unit stride in the last dim) -> int64 [R]."""
    rows, stride = _rows(x)
    out = torch.empty(rows.shape[0], dtype=torch.int64)
    library().argmax_rows(rows.data_ptr(), stride, rows.shape[0], rows.shape[1], out.data_ptr())
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    rows, stride = _rows(x)
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype)
    library().silu_and_mul(rows.data_ptr(), stride, out.data_ptr(), rows.shape[0], inter)
    return out


def rotary_neox(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, head_size: int,
                cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (query, key): views of one [T, (Hq + Hkv) * D] buffer."""
    tokens, q_width = query.shape
    k_width = key.shape[1]
    out = torch.empty((tokens, q_width + k_width), dtype=query.dtype)
    positions = positions.contiguous()
    cache = cos_sin_cache.contiguous()
    library().rotary_neox(positions.data_ptr(), query.data_ptr(), query.stride(0), key.data_ptr(), key.stride(0),
                          cache.data_ptr(), out.data_ptr(), tokens, q_width // head_size, k_width // head_size,
                          head_size, cache.shape[1])
    return out[:, :q_width], out[:, q_width:]


def store_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hkv, D] whose heads are contiguous within a token (any token stride)."""
    _, num_blocks, block_size, num_kv_heads, head_size = kv_cache.shape
    slots = slot_mapping.contiguous()
    library().store_kv(key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0), kv_cache.data_ptr(),
                       num_blocks * block_size, slots.data_ptr(), key.shape[0], num_kv_heads * head_size)


def decode_attention(query: torch.Tensor, kv_cache: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """query [S, Hq, D] float32 (heads contiguous within a token) -> [S, Hq, D]; kv_cache float32 or
    bfloat16 (widened as it is read)."""
    num_seqs, num_heads, head_size = query.shape
    _, num_blocks, block_size, num_kv_heads, _ = kv_cache.shape
    out = torch.empty((num_seqs, num_heads, head_size), dtype=query.dtype)
    seq_lens = seq_lens.contiguous()
    if block_table.stride(-1) != 1:
        block_table = block_table.contiguous()
    status = library().decode_attention(
        query.data_ptr(), query.stride(0), kv_cache.data_ptr(), num_blocks * block_size, block_table.data_ptr(),
        block_table.stride(0), seq_lens.data_ptr(), out.data_ptr(), num_seqs, num_heads, num_kv_heads, head_size,
        block_size, scale, int(kv_cache.dtype == torch.bfloat16),
    )
    if status != 0:
        raise MemoryError("decode attention could not allocate its scratch")
    return out


def quantize_int4_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int4_cpu_linear.quantize_int4_groups's result for a float32 weight [N, K], in one pass."""
    weight = weight.contiguous()  # a column-major weight: copying first is ~2x faster than strided reads
    n, k = weight.shape
    q = torch.empty((n, k), dtype=torch.int32)
    scale_zero = torch.empty((n, k // group_size, 2), dtype=torch.float32)
    library().quantize_int4_groups_f32(weight.data_ptr(), weight.stride(0), weight.stride(1), q.data_ptr(),
                                       scale_zero.data_ptr(), n, k, group_size)
    return q, scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def quantize_int8_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8_cpu_lm_head.quantize_int8_groups's result for a float32 weight [N, K], in one pass."""
    weight = weight.contiguous()  # a column-major weight: copying first is ~2x faster than strided reads
    n, k = weight.shape
    q = torch.empty((n, k), dtype=torch.int32)
    d = torch.empty((n, k // group_size), dtype=torch.bfloat16)
    library().quantize_int8_groups_f32(weight.data_ptr(), weight.stride(0), weight.stride(1), q.data_ptr(),
                                       d.data_ptr(), n, k, group_size)
    return q, d
