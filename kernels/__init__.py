"""localllm's compute kernels: `ops` (checked entry points), `reference` (pure torch, the ground
truth and the CPU path), `triton/` (GPU kernels).

NOTE: imports torch (and later triton) only, never localllm, and only relative imports inside,
so the same files work as `localllm.kernels` (wheel / source tree) and stand-alone.
"""
