"""Checkpoint formats, read and written exactly (DESIGN.md, "Quantized formats"): AutoAWQ "gemm"
(awq.py), GPTQ v1 (gptq.py) and compressed-tensors pack-quantized / float-quantized
(compressed_tensors.py). Every reader ends in the engine's one integer layout, `PackedWeights`
(runtime.py), so one kernel serves every format."""
