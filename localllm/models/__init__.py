"""Models: the registry (architecture -> class), the checkpoint loaders and the model classes.

    ckpt = load_checkpoint(path)                      # HF dir (safetensors) or .gguf
    model = build_model(ckpt.hf_config, dtype, device, max_model_len=ckpt.max_model_len)
    model.load_weights(ckpt.weights)
    num_layers, num_kv_heads, head_dim = kv_cache_spec(ckpt.hf_config)
"""

from localllm.models.loader import Checkpoint, load_checkpoint
from localllm.models.registry import build_model, kv_cache_spec, supported_architectures

__all__ = ["Checkpoint", "load_checkpoint", "build_model", "kv_cache_spec", "supported_architectures"]
