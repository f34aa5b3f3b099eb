"""Quantization: the checkpoint formats we read and write (formats/), the offline methods (awq,
gptq, fp8 through `quantize.quantize_model`), calibration one decoder layer at a time
(layerwise), the quality report, and the memory planner (fit).

Heavy imports (torch, transformers) stay inside the modules that need them.
"""
