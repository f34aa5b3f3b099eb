"""What quantizing cost: perplexity before and after on held-out text, how often the quantized
model's top-1 token agrees with the original's, sizes on disk and in memory, and the peak memory
of calibration next to the size of the largest layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unmeasured"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class QuantizeReport:
    model: str
    out_dir: str
    scheme: str  # "awq int4 g128", "fp8 e4m3 per-channel", ...
    ppl_original: float
    ppl_quantized: float
    top1_agreement: float
    eval_windows: int
    eval_tokens: int
    disk_original: int  # bytes of the source's weight files
    disk_quantized: int  # bytes of the written safetensors files
    memory_original_16bit: int  # every weight at 2 bytes
    memory_quantized: int  # the engine's loaded model (parameters + buffers)
    memory_device: str
    calib_samples: int
    calib_seq_len: int
    calib_source: str
    peak_memory: int | None  # bytes over the start of calibration (see quant.memory)
    largest_layer: int  # one decoder layer's float32 weights, bytes
    num_layers: int
    seconds: float
    linears_16bit: int = 0  # FP8: decoder linears (as the engine fuses them) left in 16 bits
    linears_total: int = 0
    bytes_16bit: int = 0  # those linears' weights at 2 bytes each
    kept: list[str] | None = None  # their engine names, most sensitive first
    linears_16bit_activations: int = 0  # FP8: linears with FP8 weights and 16-bit activations
    kept_activations: list[str] | None = None  # their engine names, most sensitive first
    # standard error of the perplexity change, in percent: the spread of the per-window mean
    # log-likelihood change over sqrt(windows) (None with one window)
    change_se_percent: float | None = None

    def _kept_note(self, short: bool = False) -> str:
        acts = self.linears_16bit_activations
        if not self.linears_16bit and not acts:
            return ""
        if short:
            more = f", {acts} with 16-bit activations" if acts else ""
            return f" [{self.linears_16bit} of {self.linears_total} linears 16-bit{more}]"
        more = f"; {acts} more with FP8 weights and 16-bit activations" if acts else ""
        return (f"; {self.linears_16bit} of {self.linears_total} linears kept 16-bit "
                f"({human_bytes(self.bytes_16bit)} of weights){more}")

    def _se_note(self) -> str:
        return "" if self.change_se_percent is None else f" ± {self.change_se_percent:.2f}"

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        change = (self.ppl_quantized / self.ppl_original - 1) * 100
        calib = (f"{self.calib_samples} x {self.calib_seq_len} tokens from {self.calib_source}"
                 if self.calib_samples else "none needed")
        return [
            f"quality on held-out text ({self.eval_windows} x {self.eval_tokens // max(self.eval_windows, 1)} tokens "
            "of pydoc_data.topics, never used to calibrate):",
            f"  perplexity       original {self.ppl_original:.3f}  ->  {self.scheme} {self.ppl_quantized:.3f} "
            f"({change:+.2f}%{self._se_note()}){self._kept_note(short=True)}",
            f"  top-1 agreement  {self.top1_agreement * 100:.1f}% of {self.eval_tokens - self.eval_windows} "
            "next-token predictions",
            "size:",
            f"  on disk          {human_bytes(self.disk_original)} (source files)  ->  "
            f"{human_bytes(self.disk_quantized)} ({self.disk_quantized / max(self.disk_original, 1):.2f}x)",
            f"  in memory        {human_bytes(self.memory_original_16bit)} at 16 bits  ->  "
            f"{human_bytes(self.memory_quantized)} as loaded on {self.memory_device}{self._kept_note()}",
            f"calibration: {calib}; peak memory {human_bytes(self.peak_memory)} "
            f"(one layer: {human_bytes(self.largest_layer)} float32, {self.num_layers} layers); "
            f"{self.seconds:.1f} s",
            f"wrote {self.out_dir}",
        ]
