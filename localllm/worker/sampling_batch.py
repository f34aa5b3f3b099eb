"""SamplingBatch: one step's sampling settings as per-row tensors on the logits' device.

Built once per step on the host from each row's SamplingParams (pure Python values, so every
flag below is known without reading the device). The Sampler then runs with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localllm.sampling_params import SamplingParams
from localllm.worker.transfer import to_device

_GREEDY_EPS = 1e-5  # NOTE: same threshold as SamplingParams.greedy


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The per-request generator for `SamplingParams.seed`. Create it once per request and keep
    it across steps: its state is the request's position in its own random stream."""
    return torch.Generator(device=device).manual_seed(seed)


def _flat_index(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row ids, token ids) of every listed token, as two int64 tensors for index_put."""
    if not any(rows):  # NOTE: the usual case, every step: no copy to the device for nothing
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    r = [i for i, toks in enumerate(rows) for _ in toks]
    c = [t for toks in rows for t in toks]
    both = to_device([r, c], torch.int64, device)
    return both[0], both[1]


@dataclass
class SamplingBatch:
    """Row i describes how to sample row i of the logits."""

    temperature: torch.Tensor  # f32[N]; < 1e-5 means greedy
    top_p: torch.Tensor  # f32[N]; 1.0 = off
    top_k: torch.Tensor  # int64[N]; 0 = off
    min_p: torch.Tensor  # f32[N]; 0.0 = off
    presence_penalty: torch.Tensor  # f32[N]
    frequency_penalty: torch.Tensor  # f32[N]
    repetition_penalty: torch.Tensor  # f32[N]; 1.0 = off
    generators: list[torch.Generator | None]  # seeded rows; None = global RNG
    prompt_token_ids: list[list[int]]  # repetition penalty only
    output_token_ids: list[list[int]]  # all three penalties
    banned_token_ids: list[list[int]]  # masked to -inf before anything else (e.g. EOS < min_tokens)
    num_logprobs: list[int | None]  # top-k alternatives wanted per row; None = no logprobs
    all_greedy: bool
    all_random: bool
    no_penalties: bool
    no_top_p_top_k_min_p: bool
    # Host-side facts that let the Sampler skip work and size tensors without a device read.
    greedy_rows: list[bool]
    no_top_p: bool
    no_top_k: bool
    no_min_p: bool
    max_top_k: int  # largest top_k in the batch (0 if none)
    # Flattened (row, token) index pairs, on device; empty when unused.
    banned_index: tuple[torch.Tensor, torch.Tensor]
    prompt_index: tuple[torch.Tensor, torch.Tensor]
    output_index: tuple[torch.Tensor, torch.Tensor]
    logprob_rows: torch.Tensor  # int64[M]: rows with num_logprobs is not None, ascending
    # int32[N, ceil(V/32)]: bit t of row i set when row i may emit token t (constrained decoding,
    # see worker/structured_output.py); None when no row is constrained.
    allowed_token_bitmask: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return len(self.generators)

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        banned_token_ids: list[list[int]],
        device: torch.device | str,
        allowed_token_bitmask: torch.Tensor | None = None,
    ) -> "SamplingBatch":
        n = len(params)
        for name, seq in (
            ("generators", generators),
            ("prompt_token_ids", prompt_token_ids),
            ("output_token_ids", output_token_ids),
            ("banned_token_ids", banned_token_ids),
        ):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} rows, params has {n}")
        device = torch.device(device)
        greedy = [p.temperature < _GREEDY_EPS for p in params]
        no_top_p = all(p.top_p >= 1.0 for p in params)
        no_top_k = all(p.top_k <= 0 for p in params)
        no_min_p = all(p.min_p <= 0.0 for p in params)
        no_penalties = not any(p.penalizes for p in params)

        # One transfer for all float settings, one for the integer ones.
        fields = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
        floats = to_device([[getattr(p, f) for p in params] for f in fields], torch.float32, device)
        num_logprobs = [p.logprobs for p in params]
        logprob_rows = [i for i, k in enumerate(num_logprobs) if k is not None]
        ints = to_device([max(p.top_k, 0) for p in params] + logprob_rows, torch.int64, device)
        return cls(
            temperature=floats[0],
            top_p=floats[1],
            top_k=ints[:n],
            min_p=floats[2],
            presence_penalty=floats[3],
            frequency_penalty=floats[4],
            repetition_penalty=floats[5],
            generators=list(generators),
            prompt_token_ids=prompt_token_ids,
            output_token_ids=output_token_ids,
            banned_token_ids=banned_token_ids,
            num_logprobs=num_logprobs,
            all_greedy=all(greedy),
            all_random=not any(greedy),
            no_penalties=no_penalties,
            no_top_p_top_k_min_p=no_top_p and no_top_k and no_min_p,
            greedy_rows=greedy,
            no_top_p=no_top_p,
            no_top_k=no_top_k,
            no_min_p=no_min_p,
            max_top_k=max((p.top_k for p in params), default=0),
            banned_index=_flat_index(banned_token_ids, device),
            # NOTE: only rows whose penalty can change a logit are indexed (prompts are long); a
            # row left out has neutral penalties, so leaving it out changes nothing.
            prompt_index=_flat_index(
                [t if p.repetition_penalty != 1.0 else [] for p, t in zip(params, prompt_token_ids)], device
            ),
            output_index=_flat_index(
                [t if p.penalizes else [] for p, t in zip(params, output_token_ids)], device
            ),
            logprob_rows=ints[n:],
            allowed_token_bitmask=(
                None if allowed_token_bitmask is None else allowed_token_bitmask.to(device, non_blocking=True)
            ),
        )
