"""llama.cpp through llama-cpp-python as a benchmark backend, on the same GGUF file. Its
high-level API runs one sequence at a time, so a batch runs its prompts one after another."""

from __future__ import annotations

import os

from localllm.bench.backends import Backend, BatchTiming, PeerUnavailable, now
from localllm.bench.floor import kv_bytes_per_token
from localllm.bench.hf_backend import gguf_file

NOT_INSTALLED = "llama.cpp: llama-cpp-python is not installed (pip install llama-cpp-python): skipped"


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    sequential = True

    def __init__(self, model_path: str, *, device: str, max_model_len: int) -> None:
        try:
            import llama_cpp
        except ImportError as e:
            raise PeerUnavailable(NOT_INSTALLED) from e
        gguf = gguf_file(model_path)
        if gguf is None:
            raise PeerUnavailable(f"llama.cpp: {model_path} is not a GGUF model; llama.cpp runs GGUF files only: skipped")
        self.path = gguf
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.threads = os.cpu_count()
        try:
            self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=max_model_len, n_threads=self.threads, n_batch=512,
                                       n_gpu_layers=-1 if self.device == "cuda" else 0, verbose=False)
        except Exception as e:  # noqa: BLE001 - any loader failure: the peer cannot run here
            raise PeerUnavailable(f"llama.cpp: cannot load {gguf}: {e}") from e
        self.version = llama_cpp.__version__

    def describe(self) -> dict:
        return {"version": self.version, "device": self.device, "weights": os.path.basename(self.path),
                "threads": self.threads, "kv_cache": "float16 (llama.cpp's default)",
                "method": "Llama.generate(), greedy (temp 0), one sequence at a time"}

    def decode_bytes(self) -> dict:
        from gguf import GGUFReader

        reader = GGUFReader(self.path)
        names = {t.name for t in reader.tensors}
        tied = "output.weight" not in names
        weights = sum(int(t.n_bytes) for t in reader.tensors if tied or t.name != "token_embd.weight")
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "llama")
        num_heads = int(meta[f"{arch}.attention.head_count"])
        head_dim = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // num_heads))
        num_kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", num_heads))
        return {"weight_bytes": weights,
                "kv_bytes_per_token": kv_bytes_per_token(int(meta[f"{arch}.block_count"]), num_kv_heads, head_dim, 2)}

    def run(self, prompts: list[list[int]], output_len: int) -> BatchTiming:
        timing = BatchTiming(started=now(), num_prompt_tokens=sum(len(p) for p in prompts))
        for prompt in prompts:
            self.llm.reset()  # NOTE: no reuse of the previous prompt's KV (llama-cpp-python's prefix cache)
            count = 0
            for _ in self.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                count += 1
                if count == 1:
                    timing.first_token.append(now())
                if count == output_len:
                    break
            timing.finished.append(now())
            timing.num_output_tokens += count
        return timing

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm = None
