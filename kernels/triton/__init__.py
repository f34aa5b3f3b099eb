"""Triton kernels, one file per kernel family. Empty until the GPU kernels land; `ops` falls back
to `reference` for every op meanwhile."""
