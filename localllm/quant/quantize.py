"""`localllm quantize`: a 16-bit model in, a quantized Hugging Face directory out (AutoAWQ gemm,
GPTQ v1 or compressed-tensors FP8), then a quality report.

The model is never whole in memory: the embedding turns calibration and held-out windows into
hidden states, then each decoder layer is loaded alone (quant.layerwise), run over both (the
held-out pass gives the original model's scores for the report), calibrated, quantized, written
out and dropped; the final norm and head score the held-out text. The written directory is then
loaded through the engine's own loader to score the quantized model, so the report measures
what is on disk.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from localllm.errors import LocalLLMError
from localllm.quant.fit import DEFAULT_FP8_KEEP_FRACTION

METHOD_BITS = {"awq": (4,), "gptq": (2, 4, 8), "fp8": (8,), "rtn": (4,)}
CALIBRATED = ("awq", "gptq")  # and fp8 with fp8_algorithm "gptq" (QuantizeOptions.calibrated)
FP8_ALGORITHMS = ("gptq", "mse", "rtn")
# FP8: the share of decoder linears (after those kept in 16 bits) that keep FP8 weights but 16-bit
# activations, the ones whose input rounding costs most, unless fp8_keep_activations says how many.
DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION = 0.25


class QuantizeError(LocalLLMError):
    """Bad input to quantize: one line for the user, nothing left in the output directory."""


@dataclass(frozen=True)
class QuantizeOptions:
    method: str
    bits: int | None = None  # None: 4 for awq/gptq/rtn, 8 for fp8
    group_size: int = 128
    sym: bool | None = None  # None: True for gptq (what vLLM's Marlin kernels take), False for rtn; awq is asymmetric
    act_order: bool = False  # GPTQ desc_act
    damp_percent: float = 0.01
    num_samples: int = 128
    seq_len: int = 512
    num_heldout: int = 24  # held-out windows for the report (the built-in text holds ~27 of 512 SmolLM2 tokens)
    calib_file: str | None = None
    device: str = "auto"
    search_tokens: int = 4096  # AWQ: input rows kept per linear for its searches
    batch_windows: int = 8  # windows per forward while calibrating
    max_shard_bytes: int = 512 << 20
    # FP8 weights, all in the same file format: "gptq" (the default; calibrated: GPTQ's error
    # feedback on the per-channel e4m3 grid), "mse" (no calibration: round to nearest with each
    # channel's scale searched for the least squared error) or "rtn" (round to nearest at amax / 448).
    fp8_algorithm: str = "gptq"
    # FP8 weight-only (W8A16): no input_activations in the file, activations stay 16-bit. Off by
    # default: the default is FP8_DYNAMIC (per-token e4m3 activations at run time).
    fp8_weight_only: bool = False
    # FP8: how many decoder linears (as the engine fuses them: q/k/v together, gate/up together)
    # stay in 16 bits, the most sensitive by quant.sensitivity's Fisher-weighted estimate; written
    # in the config's `ignore`. None: DEFAULT_FP8_KEEP_FRACTION of them; 0: every linear in FP8.
    fp8_keep: int | None = None
    # FP8: how many more decoder linears keep FP8 weights but 16-bit activations (a second,
    # weight-only config group), the most sensitive to input rounding by the same pass. None:
    # DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION of them; 0: per-token FP8 activations everywhere else.
    fp8_keep_activations: int | None = None

    def fp8_keep_count(self, num_linears: int) -> int:
        """Linears to keep in 16 bits for a model with num_linears decoder linears (0 unless fp8)."""
        if self.method != "fp8":
            return 0
        if self.fp8_keep is None:
            return math.ceil(num_linears * DEFAULT_FP8_KEEP_FRACTION)
        return self.fp8_keep

    def fp8_keep_activations_count(self, num_linears: int) -> int:
        """Linears (besides the fp8_keep_count ones) that keep 16-bit activations (0 unless fp8
        with per-token activations)."""
        if self.method != "fp8" or self.fp8_weight_only:
            return 0
        if self.fp8_keep_activations is None:
            return math.ceil(num_linears * DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION)
        return self.fp8_keep_activations

    @property
    def needs_calibration_text(self) -> bool:
        return self.calibrated or (self.method == "fp8" and (self.fp8_keep != 0 or self.fp8_keep_activations != 0))

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED or (self.method == "fp8" and self.fp8_algorithm == "gptq")

    @property
    def resolved_bits(self) -> int:
        return self.bits if self.bits is not None else (8 if self.method == "fp8" else 4)

    @property
    def resolved_sym(self) -> bool:
        if self.method == "awq":
            return False
        return self.sym if self.sym is not None else self.method == "gptq"

    def validate(self) -> None:
        if self.method not in METHOD_BITS:
            raise QuantizeError(f"unknown method {self.method!r}: choose one of {', '.join(METHOD_BITS)}")
        if self.resolved_bits not in METHOD_BITS[self.method]:
            allowed = " or ".join(map(str, METHOD_BITS[self.method]))
            raise QuantizeError(f"{self.method} cannot hold {self.resolved_bits}-bit weights (its format takes {allowed})")
        if self.method == "awq" and self.sym:
            raise QuantizeError("awq is asymmetric (zero points); use --method rtn or gptq for symmetric grids")
        if self.fp8_algorithm not in FP8_ALGORITHMS:
            raise QuantizeError(f"unknown fp8 algorithm {self.fp8_algorithm!r}: choose one of {', '.join(FP8_ALGORITHMS)}")
        for flag, value in (("--fp8-keep", self.fp8_keep), ("--fp8-keep-activations", self.fp8_keep_activations)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                      or (self.method != "fp8" and value)):
                raise QuantizeError(f"{flag} must be a number of linears >= 0 with --method fp8, got {value!r}"
                                    + ("" if self.method == "fp8" else f" with --method {self.method}"))
        if self.fp8_weight_only and self.fp8_keep_activations:
            raise QuantizeError("--fp8-keep-activations has nothing to keep with weight-only FP8 "
                                "(its activations are 16-bit everywhere)")
        if self.method != "fp8" and self.group_size < 1:
            raise QuantizeError(f"group size must be a positive number of input channels, got {self.group_size}")
        if self.num_samples < 1 or self.seq_len < 16 or self.num_heldout < 1:
            raise QuantizeError("need --samples >= 1, a sequence length >= 16 and at least one held-out window")
        if self.calib_file is not None and not os.path.isfile(self.calib_file):
            raise QuantizeError(f"calibration file {self.calib_file!r} not found")

    def scheme_name(self, num_kept: int | None = None, num_kept_activations: int | None = None) -> str:
        """num_kept / num_kept_activations: FP8 linears left in 16 bits / with 16-bit activations,
        once known (None: say how they are chosen)."""
        if self.method == "fp8":
            how = {"gptq": "GPTQ", "mse": "round-to-nearest, MSE scales"}.get(self.fp8_algorithm, "round-to-nearest")
            acts = "16-bit activations, weight-only" if self.fp8_weight_only else "per-token activations"
            if num_kept is None:
                kept = "" if self.fp8_keep == 0 else ", the most sensitive linears 16-bit"
            else:
                kept = f", {num_kept} most sensitive linears 16-bit" if num_kept else ""
            if num_kept_activations is None:
                keep_acts = self.fp8_keep_activations != 0 and not self.fp8_weight_only
                kept += ", 16-bit activations in the next most sensitive" if keep_acts else ""
            elif num_kept_activations:
                kept += f", {num_kept_activations} more with 16-bit activations"
            return f"fp8 e4m3 {how} (per-channel weights, {acts}{kept})"
        grid = "sym" if self.resolved_sym else "asym"
        order = ", act-order" if self.act_order else ""
        return f"{self.method} int{self.resolved_bits} g{self.group_size} {grid}{order}"


def _check_model(checkpoint, options: QuantizeOptions) -> None:
    from localllm.quant.config import raw_quantization_config

    raw = raw_quantization_config(checkpoint.hf_config)
    if raw is not None:
        method = raw.get("quant_method", "unknown")
        raise QuantizeError(f"{checkpoint.path} is already quantized ({method}): quantize its 16-bit original")
    config = checkpoint.hf_config
    if options.method == "fp8":
        from localllm.quant.layerwise import LINEARS

        num_linears = config.num_hidden_layers * len(LINEARS)
        if options.fp8_keep_count(num_linears) + options.fp8_keep_activations_count(num_linears) > num_linears:
            what = (f"fp8_keep {options.fp8_keep}" if options.fp8_keep_activations is None else
                    f"fp8_keep {options.fp8_keep_count(num_linears)} + fp8_keep_activations "
                    f"{options.fp8_keep_activations}")
            raise QuantizeError(f"{what} is more than the model's {num_linears} decoder linears "
                                f"({config.num_hidden_layers} layers x {len(LINEARS)}, q/k/v and gate/up fused)")
        return
    from localllm.models.registry import kv_cache_spec

    _, _, head_dim = kv_cache_spec(config)
    inputs = {"q/k/v/gate/up": config.hidden_size, "o_proj": config.num_attention_heads * head_dim,
              "down_proj": config.intermediate_size}
    for name, k in inputs.items():
        if k % options.group_size:
            raise QuantizeError(f"group size {options.group_size} does not divide the {k} input features of "
                                f"{name}; pick one that divides {config.hidden_size}, "
                                f"{inputs['o_proj']} and {config.intermediate_size}")


def resolve_device(name: str) -> torch.device:
    """The engine's device rule, its error as a QuantizeError (one line, before anything is written)."""
    from localllm.worker.model_runner import resolve_device as engine_device

    try:
        return engine_device(name)
    except RuntimeError as e:
        raise QuantizeError(str(e)) from None


@dataclass
class QuantizeJob:
    """Everything checked and loaded before the first layer is touched (see prepare)."""

    model: str
    out_dir: str
    options: QuantizeOptions
    checkpoint: object
    calibration: object
    device: torch.device
    started: float


def prepare(model: str, out_dir: str, options: QuantizeOptions) -> QuantizeJob:
    """Check every input (method, bits, group size against the model's shapes, an already
    quantized model, the output directory, the calibration text) and load the checkpoint's
    config, tokenizer and calibration windows. Raises QuantizeError / ModelLoadError."""
    from localllm.models.loader import load_checkpoint
    from localllm.quant.calibration import CalibrationError, load_calibration
    from localllm.quant.writer import OutputDirError, check_output_dir

    started = time.monotonic()
    options.validate()
    try:
        check_output_dir(out_dir)
    except OutputDirError as e:
        raise QuantizeError(str(e)) from None
    device = resolve_device(options.device)
    checkpoint = load_checkpoint(model)
    _check_model(checkpoint, options)
    tokenizer = checkpoint.tokenizer
    from localllm.quant.sensitivity import SENSITIVITY_WINDOWS

    num_samples = options.num_samples if options.calibrated else min(options.num_samples, SENSITIVITY_WINDOWS)
    try:
        calibration = load_calibration(
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            num_samples if options.needs_calibration_text else 1, options.seq_len, options.num_heldout,
            options.calib_file if options.needs_calibration_text else None)
    except CalibrationError as e:
        raise QuantizeError(str(e)) from None
    if calibration.heldout.shape[0] == 0:
        raise QuantizeError(f"the held-out text is shorter than one window of {options.seq_len} tokens")
    return QuantizeJob(model, out_dir, options, checkpoint, calibration, device, started)


def run_job(job: QuantizeJob, on_layer: Callable[[int, int], None] | None = None):
    """Quantize layer by layer, write and publish the directory, then score it: a QuantizeReport.
    on_layer(done, num_layers) is called as each decoder layer is finished (a progress bar)."""
    from localllm.quant.run_layers import run_layers
    from localllm.quant.writer import CheckpointWriter, OutputDirError

    checkpoint, options = job.checkpoint, job.options
    try:
        with CheckpointWriter(job.out_dir, options.max_shard_bytes) as writer:
            run = run_layers(checkpoint, job.calibration, options, job.device, writer, on_layer)
            writer.finish(_output_config(checkpoint, options, run.out_dtype, run.kept, run.kept_activations),
                          tokenizer=_tokenizer_to_save(checkpoint),
                          tokenizer_dir=checkpoint.path if checkpoint.format == "safetensors" else None,
                          generation_config=checkpoint.generation_config or None)
            writer.publish()
    except OutputDirError as e:
        raise QuantizeError(str(e)) from None
    seconds = time.monotonic() - job.started
    return _report(job.model, job.out_dir, checkpoint, job.calibration, options, run, job.device, seconds)


def quantize_model(model: str, out_dir: str, options: QuantizeOptions,
                   on_layer: Callable[[int, int], None] | None = None):
    """Quantize `model` (a local directory or .gguf path) into out_dir; returns a QuantizeReport."""
    return run_job(prepare(model, out_dir, options), on_layer)


def _tokenizer_to_save(checkpoint):
    tokenizer = checkpoint.tokenizer
    if checkpoint.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = checkpoint.chat_template
    return tokenizer


def _output_config(checkpoint, options: QuantizeOptions, dtype: torch.dtype, kept: tuple[str, ...] = (),
                   kept_activations: tuple[str, ...] = ()) -> dict:
    from localllm.quant.export import quantization_config

    config_path = os.path.join(checkpoint.path, "config.json")
    if checkpoint.format == "safetensors" and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    else:
        config = checkpoint.hf_config.to_dict()
    dtype_name = str(dtype).removeprefix("torch.")
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "torch_dtype":
            config[key] = dtype_name
    config["quantization_config"] = quantization_config(
        options.method, options.resolved_bits, options.group_size, options.resolved_sym, options.act_order,
        options.damp_percent, options.fp8_weight_only, kept, kept_activations)
    return config


def _report(model, out_dir, checkpoint, calibration, options, run, device, seconds):
    from localllm.models.loader import load_checkpoint
    from localllm.models.registry import build_model
    from localllm.quant.evaluate import perplexity, score_model
    from localllm.quant.report import QuantizeReport

    quantized = load_checkpoint(out_dir)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine_model = build_model(quantized.hf_config, dtype, device, max_model_len=options.seq_len)
    engine_model.load_weights(quantized.weights())
    nll, top1 = score_model(engine_model, quantized.hf_config, calibration.heldout, device, dtype)
    memory = sum(t.numel() * t.element_size() for t in list(engine_model.parameters()) + list(engine_model.buffers()))
    disk = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir) if f.endswith(".safetensors"))
    windows, length = calibration.heldout.shape
    return QuantizeReport(
        model=model, out_dir=out_dir, scheme=options.scheme_name(len(run.kept), len(run.kept_activations)),
        ppl_original=perplexity(run.original_nll), ppl_quantized=perplexity(nll),
        top1_agreement=float((top1 == run.original_top1).float().mean()),
        eval_windows=windows, eval_tokens=windows * length,
        disk_original=run.source_bytes, disk_quantized=disk,
        memory_original_16bit=2 * run.num_params, memory_quantized=memory, memory_device=str(device),
        calib_samples=calibration.samples.shape[0] if options.needs_calibration_text else 0,
        calib_seq_len=options.seq_len, calib_source=calibration.source,
        peak_memory=run.peak_memory, largest_layer=run.largest_layer, num_layers=run.num_layers,
        seconds=seconds + 0.0,
        linears_16bit=len(run.kept), linears_total=run.num_linears, bytes_16bit=_kept_bytes(engine_model, run.kept),
        kept=list(run.kept), linears_16bit_activations=len(run.kept_activations),
        kept_activations=list(run.kept_activations), change_se_percent=change_standard_error(run.original_nll, nll),
    )


def change_standard_error(original_nll: torch.Tensor, quantized_nll: torch.Tensor) -> float | None:
    """Standard error (percent) of the perplexity change over held-out windows [E, L] of equal
    length: the ratio is exp(mean of the windows' mean log-likelihood changes d), so its standard
    error is exp(mean d) * sd(d) / sqrt(E) (the delta method). None for one window."""
    per_window = quantized_nll.double().mean(1) - original_nll.double().mean(1)
    if per_window.numel() < 2:
        return None
    return float(per_window.mean().exp() * per_window.std() / per_window.numel() ** 0.5 * 100)


def _kept_bytes(engine_model, kept: tuple[str, ...]) -> int:
    """Bytes the kept linears' weights take at 16 bits (2 per weight)."""
    return sum(2 * engine_model.get_submodule(name).weight.numel() for name in kept)
