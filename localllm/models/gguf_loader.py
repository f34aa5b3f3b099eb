"""A single .gguf file (llama.cpp's format): HF config from its metadata, HF tensor names, the
tokenizer and chat template it carries, weights dequantized to float32 one tensor at a time.

NOTE: llama.cpp's converter permutes the rows of Q and K for the "llama" architecture (it turns
HF's rotate-half rotary layout into interleaved pairs); we un-permute them. qwen2/qwen3 files are
written with the neox rotary layout and are not permuted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from gguf import GGMLQuantizationType

from localllm.errors import ModelLoadError, UnsupportedModelError
from localllm.models.gguf_file import GGUFFile
from localllm.models.loader import Checkpoint, LazyWeights, clamp_to_window, eos_token_ids

logger = logging.getLogger(__name__)

# GGUF architecture -> (transformers config class, HF architecture)
_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_SKIPPED = ("rope_freqs.weight",)  # folded into the config's rope scaling


def hf_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, or None when it has no counterpart we know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def unpermute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's `permute`: rows (head, pair, 2) -> (head, 2, pair)."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def _llama3_factors(inv_freq: torch.Tensor, factor: float, original: float, low: float = 1.0, high: float = 4.0):
    """llama.cpp's rope_freqs for HF's llama3 scaling (the divisor of each inverse frequency)."""
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    return torch.where(
        wavelen < original / high, torch.ones_like(wavelen),
        torch.where(wavelen > original / low, torch.full_like(wavelen, factor), 1 / ((1 - smooth) / factor + smooth)),
    )


def _llama3_rope_from_freqs(gguf: GGUFFile, head_dim: int, theta: float) -> dict:
    """Recover HF's llama3 rope scaling from the rope_freqs tensor llama.cpp's converter writes
    (factor = the largest divisor; low/high_freq_factor 1 and 4 as in every Llama 3.x config;
    original context from the metadata, from the interpolated band, or Llama 3.1's 8192)."""
    factors = gguf.tensor("rope_freqs.weight").double()
    factor = float(factors.max())
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    candidates = [gguf.metadata.get(f"{gguf.architecture}.rope.scaling.original_context_length"), 8192]
    band = (factors > 1.0 + 1e-6) & (factors < factor - 1e-6)
    if factors.shape == inv_freq.shape and band.any() and factor > 1:
        # 1/f = (1 - s)/factor + s  and  s = (original/wavelen - 1)/3  =>  solve for original
        s = (1 / factors[band] - 1 / factor) / (1 - 1 / factor)
        candidates.insert(0, round(float((2 * math.pi / inv_freq[band] * (3 * s + 1)).mean())))
    for original in candidates:
        if original and factors.shape == inv_freq.shape and torch.allclose(
            factors, _llama3_factors(inv_freq, factor, float(original)), rtol=1e-3
        ):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": int(original)}
    raise ModelLoadError(gguf.path, "rope_freqs does not match Llama 3 rope scaling; cannot reproduce it")


def _light_config_class(model_type: str):
    """A PretrainedConfig subclass carrying only `model_type`.

    NOTE: importing transformers' LlamaConfig / Qwen2Config pulls in torch.compile and the hub
    kernel machinery (~2 s of start-up); our model reads only plain attributes (rope_parameters
    included), so a bare config holding the GGUF's values serves."""
    from transformers import PretrainedConfig

    return type(f"GGUF{model_type.capitalize()}Config", (PretrainedConfig,), {"model_type": model_type})


def build_hf_config(gguf: GGUFFile):
    arch = gguf.architecture
    if arch not in _ARCHS:
        raise UnsupportedModelError(gguf.path, arch, sorted(_ARCHS))
    md = gguf.metadata

    def get(key: str, default=None, required: bool = False):
        value = md.get(f"{arch}.{key}", default)
        if required and value is None:
            raise ModelLoadError(gguf.path, f"GGUF metadata lacks {arch}.{key}")
        return value

    if "token_embd.weight" not in gguf.tensors:
        raise ModelLoadError(gguf.path, "no token_embd.weight tensor")
    vocab_size = gguf.tensors["token_embd.weight"].shape[0]
    hidden = int(get("embedding_length", required=True))
    num_heads = int(get("attention.head_count", required=True))
    num_kv_heads = get("attention.head_count_kv") or num_heads
    if isinstance(num_kv_heads, list):
        raise ModelLoadError(gguf.path, "per-layer kv head counts are not supported")
    head_dim = int(get("attention.key_length") or hidden // num_heads)
    theta = float(get("rope.freq_base", 10000.0))
    scaling = None
    scaling_type = get("rope.scaling.type")
    if "rope_freqs.weight" in gguf.tensors:
        scaling = _llama3_rope_from_freqs(gguf, head_dim, theta)
    elif scaling_type == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor", 1.0))}
    elif scaling_type not in (None, "none"):
        raise ModelLoadError(gguf.path, f"rope scaling {scaling_type!r} is not supported (supported: linear, llama3)")
    config_cls_name, hf_arch = _ARCHS[arch]
    kwargs = dict(
        architectures=[hf_arch],
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length", required=True)),
        num_hidden_layers=int(get("block_count", required=True)),
        num_attention_heads=num_heads,
        num_key_value_heads=int(num_kv_heads),
        head_dim=head_dim,
        max_position_embeddings=int(get("context_length", 2048)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        # transformers 5 spelling; localllm.layers.rotary.rope_parameters reads either.
        rope_parameters={"rope_theta": theta, **(scaling or {"rope_type": "default"})},
        tie_word_embeddings="output.weight" not in gguf.tensors,
        bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
    )
    if arch == "llama":
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    if arch == "qwen3":
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    if arch in ("qwen2", "qwen3"):
        kwargs["use_sliding_window"] = False
    kwargs.update(hidden_act="silu", attention_dropout=0.0)
    try:
        return _light_config_class(arch)(**kwargs)
    except Exception as e:
        raise ModelLoadError(gguf.path, f"GGUF metadata gives an invalid {config_cls_name}: {e}") from None


def _stream(gguf: GGUFFile, hf_config):
    permute = gguf.architecture == "llama"
    num_heads, num_kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    for name in gguf.tensors:
        if name in _SKIPPED:
            continue
        target = hf_name(name)
        if target is None:
            raise ModelLoadError(gguf.path, f"unexpected tensor {name!r} for architecture {gguf.architecture!r}")
        tensor = gguf.tensor(name)
        if permute and ".attn_q." in name:
            tensor = unpermute(tensor, num_heads)
        elif permute and ".attn_k." in name:
            tensor = unpermute(tensor, num_kv_heads)
        yield target, tensor


def _tokenizer_cache_dir(path: str) -> Path:
    """Where the tokenizer converted from this exact file (path, size, mtime) is kept."""
    from localllm.hub.resolve import localllm_home

    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    return localllm_home() / "tokenizers" / key


def _tokenizer(path: str):
    """The GGUF's tokenizer. Converting it from the metadata takes about a second, so the result
    is saved once (tokenizer.json and config) and later loads read that instead.
    NOTE: the cache is keyed by the file's path, size and mtime, and written to a temporary
    directory then renamed, so a reader never sees a half-written copy."""
    from transformers import PreTrainedTokenizerFast

    cache = _tokenizer_cache_dir(path)
    if (cache / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(cache), local_files_only=True)
        except Exception as e:  # a damaged cache entry: rebuild it below
            logger.warning("ignoring the cached tokenizer in %s: %s", cache, e)
            shutil.rmtree(cache, ignore_errors=True)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), local_files_only=True
        )
    except Exception as e:
        raise ModelLoadError(path, f"cannot build the tokenizer from the GGUF metadata: {e}") from None
    _save_tokenizer(tokenizer, cache)
    return tokenizer


def _save_tokenizer(tokenizer, cache: Path) -> None:
    staging = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, cache)
    except OSError as e:  # a read-only home, or a concurrent writer that won: nothing is lost
        logger.debug("tokenizer cache not written (%s)", e)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def load_gguf(path: str) -> Checkpoint:
    gguf = GGUFFile(path)
    hf_config = build_hf_config(gguf)
    tokenizer = _tokenizer(path)
    md = gguf.metadata
    generation_config = {
        k: md[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id") if f"tokenizer.ggml.{k}" in md
    }
    extra_eos = [md.get("tokenizer.ggml.eot_token_id"), md.get("tokenizer.ggml.eom_token_id")]
    notes: list[str] = []
    chat_template = md.get("tokenizer.chat_template")
    return Checkpoint(
        path=path,
        format="gguf",
        hf_config=hf_config,
        tokenizer=tokenizer,
        chat_template=chat_template if isinstance(chat_template, str) else getattr(tokenizer, "chat_template", None),
        generation_config=generation_config,
        eos_token_ids=eos_token_ids(tokenizer, generation_config, extra_eos),
        weights=LazyWeights(lambda: _stream(gguf, hf_config), len(gguf.tensors)),
        max_model_len=clamp_to_window(hf_config, int(hf_config.max_position_embeddings), notes),
        notes=notes,
        weight_quantization=_linear_weight_type(gguf),
    )


def _linear_weight_type(gguf: GGUFFile) -> str | None:
    """The most common ggml type among the decoder layers' 2-D weights."""
    from collections import Counter

    types = Counter(
        GGMLQuantizationType(t.ggml_type).name
        for name, t in gguf.tensors.items()
        if name.startswith("blk.") and len(t.shape) == 2
    )
    return types.most_common(1)[0][0] if types else None
