"""Hugging Face transformers `generate` as a benchmark backend, on the same weights: a model
directory as is, a GGUF through transformers' GGUF loader (dequantized: float32 on the CPU,
bfloat16 on CUDA). Prompts of equal length need no padding, so batches are plain tensors."""

from __future__ import annotations

import glob
import os

from localllm.bench.backends import Backend, BatchTiming, PeerUnavailable, now
from localllm.bench.floor import kv_bytes_per_token, weight_bytes_read


def gguf_file(model_path: str) -> str | None:
    """The GGUF a model path names: the file itself, or the one .gguf of a directory."""
    if model_path.endswith(".gguf"):
        return model_path
    found = sorted(glob.glob(os.path.join(model_path, "*.gguf")))
    return found[0] if len(found) == 1 and not os.path.exists(os.path.join(model_path, "config.json")) else None


class _TokenTimes:
    """A generate() streamer that keeps the time of each new token (its first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._saw_prompt = False

    def put(self, value) -> None:
        if self._saw_prompt:
            self.times.append(now())
        self._saw_prompt = True

    def end(self) -> None:
        pass


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model_path: str, *, device: str, max_batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.max_batch_size = max_batch_size
        gguf = gguf_file(model_path)
        self.source = f"GGUF {os.path.basename(gguf)}, dequantized by transformers" if gguf else model_path
        try:
            if gguf:
                directory, name = os.path.split(gguf)
                model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=self.dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        except Exception as e:  # noqa: BLE001 - any loader failure: the peer cannot run here
            raise PeerUnavailable(f"hf: transformers cannot load {model_path}: {str(e).splitlines()[0]}") from e
        self.model = model.to(self.device).eval()
        pad = model.generation_config.pad_token_id
        pad = model.generation_config.eos_token_id if pad is None else pad
        self.pad_token_id = pad[0] if isinstance(pad, list) else pad  # NOTE: equal lengths: never used to pad

    def describe(self) -> dict:
        import transformers

        return {"version": transformers.__version__, "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch."), "weights": self.source,
                "max_batch_size": self.max_batch_size, "method": "generate(), greedy, min_new_tokens = max_new_tokens"}

    def decode_bytes(self) -> dict:
        from localllm.models.registry import kv_cache_spec

        config = self.model.config
        tied = bool(getattr(config, "tie_word_embeddings", False))
        element_size = self.model.dtype.itemsize
        return {"weight_bytes": weight_bytes_read(self.model.named_parameters(), tied),
                "kv_bytes_per_token": kv_bytes_per_token(*kv_cache_spec(config), element_size)}

    def run(self, prompts: list[list[int]], output_len: int) -> BatchTiming:
        import torch

        timing = BatchTiming(started=now(), num_prompt_tokens=sum(len(p) for p in prompts))
        for start in range(0, len(prompts), self.max_batch_size):
            batch = prompts[start:start + self.max_batch_size]
            input_ids = torch.tensor(batch, dtype=torch.long, device=self.device)
            streamer = _TokenTimes()
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=output_len,
                    min_new_tokens=output_len, do_sample=False, pad_token_id=self.pad_token_id, streamer=streamer,
                )
            if self.device == "cuda":
                torch.cuda.synchronize()
            ended = now()
            timing.num_output_tokens += (out.shape[1] - input_ids.shape[1]) * len(batch)
            timing.first_token += [streamer.times[0]] * len(batch)
            timing.finished += [ended] * len(batch)
        return timing

    def close(self) -> None:
        self.model = None
