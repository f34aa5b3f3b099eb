"""nn.Modules with Hugging Face names, built on localllm.kernels.ops: linear (dense, fused qkv /
gate_up), rmsnorm, rotary, attention (paged), activation, embedding."""
