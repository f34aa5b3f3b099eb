"""Sampler: logits[N, V] -> one token per row, without a host sync (gpt-fast / vLLM v1 style).

Order: banned tokens -> penalties -> allowed-token bitmask (constrained decoding) -> greedy rows
take the argmax; random rows: temperature ->
min_p -> top_k -> top_p -> exponential race. Everything stays on the logits' device; the caller
reads the ids with one `.tolist()`.

Logprobs follow vLLM v1's default ("raw_logprobs"): log_softmax of the logits exactly as the
model produced them, before banned tokens, penalties, temperature and top-p/top-k/min-p. The
token reported first is the one sampled (even where processing made it unlikely in the raw
distribution), with its rank in that raw distribution (see `_rank`); then the top-k tokens of
the raw distribution with ranks 1..k.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from localllm.kernels import ops
from localllm.outputs import TokenLogprobs
from localllm.worker.sampling_batch import _GREEDY_EPS, SamplingBatch, seeded_generator
from localllm.worker.structured_output import apply_token_bitmask
from localllm.worker.transfer import HostCopies

__all__ = [
    "HostSamplerOutput", "Sampler", "SamplerOutput", "SamplingBatch", "compute_prompt_logprobs", "seeded_generator",
]

_NEG_INF = float("-inf")


# ---------------------------------------------------------------- logits processing


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """vLLM semantics: repetition over prompt + output tokens (divide positive logits, multiply
    negative ones), frequency by output count, presence by output occurrence. Out of place."""
    n, v = logits.shape
    seen = torch.zeros(n, v, dtype=torch.bool, device=logits.device)
    seen.index_put_(batch.prompt_index, torch.ones((), dtype=torch.bool, device=logits.device))
    counts = torch.zeros(n, v, dtype=torch.float32, device=logits.device)
    counts.index_put_(
        batch.output_index, torch.ones((), dtype=torch.float32, device=logits.device), accumulate=True
    )
    in_output = counts > 0
    rep = torch.where(seen | in_output, batch.repetition_penalty.unsqueeze(1), 1.0)
    logits = torch.where(logits > 0, logits / rep, logits * rep)
    logits = logits - batch.frequency_penalty.unsqueeze(1) * counts
    return logits - batch.presence_penalty.unsqueeze(1) * in_output


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p * (the top token's probability)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, _NEG_INF)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Keep each row's top_k logits (ties with the k-th kept too); top_k == 0 leaves a row be.
    `max_top_k` is the batch's largest k, known on the host, so no sort of the whole vocab."""
    k_max = min(max_top_k, logits.shape[-1])
    top = logits.topk(k_max, dim=-1).values  # descending
    k = top_k.clamp(min=1, max=k_max) - 1
    kth = top.gather(1, k.unsqueeze(1))
    mask = (logits < kth) & (top_k > 0).unsqueeze(1)
    return logits.masked_fill(mask, _NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to >= top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False  # NOTE: the most likely token always survives
    # NOTE: rows with top_p == 1 drop nothing, not even zero-probability tails, so a row's
    # result never depends on the other rows' settings.
    drop &= (top_p < 1.0).unsqueeze(1)
    return logits.masked_fill(drop.scatter(1, order, drop), _NEG_INF)


def exponential_race(
    probs: torch.Tensor, generators: list[torch.Generator | None], skip_rows: list[bool]
) -> torch.Tensor:
    """argmax(probs / q), q ~ Exp(1) iid: a draw from Categorical(probs) with no sync.

    NOTE: a seeded row draws its q from its own generator, V numbers per step, so its tokens do
    not depend on which other rows share the batch. Rows in `skip_rows` (greedy) draw nothing."""
    q = torch.empty_like(probs)
    seeded = [(i, g) for i, g in enumerate(generators) if g is not None and not skip_rows[i]]
    if len(seeded) < len(generators):
        q.exponential_()
    for i, g in seeded:
        q[i].exponential_(generator=g)
    return (probs / q).argmax(dim=-1)


# ---------------------------------------------------------------- logprobs


def _rank(logprobs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's chosen logprob: the count of tokens at least as likely (vLLM's
    count, so a tie ranks the chosen token last among its equals)."""
    return (logprobs >= chosen.unsqueeze(1)).sum(dim=-1)


@dataclass
class _PendingLogprobs:
    """Device tensors for the rows that asked for logprobs; read back only when needed."""

    rows: list[int]
    num_top: list[int]
    token_ids: torch.Tensor  # int64[M, 1 + K]: the chosen token, then the top K
    logprobs: torch.Tensor  # f32[M, 1 + K]
    chosen_ranks: torch.Tensor  # int64[M]

    def tensors(self) -> list[torch.Tensor]:
        return [self.token_ids, self.logprobs, self.chosen_ranks]

    def to_lists(self, num_rows: int, tensors: list[torch.Tensor] | None = None) -> list[TokenLogprobs | None]:
        """`tensors`: host copies of `tensors()`, if made already."""
        token_ids, logprobs, chosen_ranks = tensors or self.tensors()
        out: list[TokenLogprobs | None] = [None] * num_rows
        ids, lps, ranks = token_ids.tolist(), logprobs.tolist(), chosen_ranks.tolist()
        for m, (row, k) in enumerate(zip(self.rows, self.num_top)):
            out[row] = TokenLogprobs(
                token_ids=ids[m][: k + 1],
                logprobs=lps[m][: k + 1],
                ranks=[ranks[m], *range(1, k + 1)],
            )
        return out


def _pending_logprobs(
    raw_logits: torch.Tensor,
    chosen: torch.Tensor,
    rows: list[int],
    num_top: list[int],
    row_index: torch.Tensor,
) -> _PendingLogprobs:
    logprobs = raw_logits.index_select(0, row_index).log_softmax(dim=-1)
    chosen_lp = logprobs.gather(1, chosen.unsqueeze(1))
    top = logprobs.topk(min(max(num_top, default=0), logprobs.shape[-1]), dim=-1)
    ranks = _rank(logprobs, chosen_lp.squeeze(1))
    return _PendingLogprobs(rows, num_top, torch.cat([chosen.unsqueeze(1), top.indices], dim=1),
                            torch.cat([chosen_lp, top.values], dim=1), ranks)


def compute_prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor, num_top: int
) -> list[TokenLogprobs]:
    """Row p: logprob and rank of the prompt token that follows position p, then the top
    `num_top` alternatives. Raw log_softmax of the logits, like sample logprobs. Syncs once."""
    num_rows = logits.shape[0]
    pending = _pending_logprobs(
        logits.float(),
        next_token_ids.to(torch.int64),
        list(range(num_rows)),
        [num_top] * num_rows,
        torch.arange(num_rows, device=logits.device),
    )
    return pending.to_lists(num_rows)  # type: ignore[return-value]


# ---------------------------------------------------------------- sampler


@dataclass
class SamplerOutput:
    sampled: torch.Tensor  # int64[N], on the logits' device
    _pending: _PendingLogprobs | None = None

    @cached_property
    def logprobs(self) -> list[TokenLogprobs | None]:
        """Per row: TokenLogprobs if the row asked, else None. NOTE: reading this syncs with the
        device (once, cached)."""
        return self.to_host().read()[1]

    def to_host(self) -> "HostSamplerOutput":
        """Queue the copies of the sampled ids and logprobs to the host now, in stream order;
        the returned object waits for them only when read."""
        tensors = [self.sampled] + (self._pending.tensors() if self._pending is not None else [])
        return HostSamplerOutput(HostCopies(tensors), self._pending)


class HostSamplerOutput:
    def __init__(self, copies: HostCopies, pending: _PendingLogprobs | None) -> None:
        self._copies = copies
        self._pending = pending

    def read(self) -> tuple[list[int], list[TokenLogprobs | None]]:
        """(sampled token ids, logprobs per row). Waits for this step's copies, not for any
        step queued after it."""
        sampled, *logprob_tensors = self._copies.wait()
        token_ids = sampled.tolist()
        if self._pending is None:
            return token_ids, [None] * len(token_ids)
        return token_ids, self._pending.to_lists(len(token_ids), logprob_tensors)


class Sampler:
    """Stateless; per-request state (seeded generators, token history) lives in the batch."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != batch.num_rows:
            raise ValueError(f"logits must be [{batch.num_rows}, V], got {tuple(logits.shape)}")
        raw = logits.float()
        # NOTE: every step below is out of place: the caller's logits are never modified.
        logits = raw
        if any(batch.banned_token_ids):
            neg_inf = torch.full((), _NEG_INF, device=logits.device)
            logits = logits.index_put(batch.banned_index, neg_inf)
        if not batch.no_penalties:
            logits = apply_penalties(logits, batch)
        if batch.allowed_token_bitmask is not None:
            logits = apply_token_bitmask(logits, batch.allowed_token_bitmask)

        if batch.all_greedy:
            sampled = ops.argmax(logits)
        else:
            sampled = self._sample_random(logits, batch)
            if not batch.all_random:
                greedy = batch.temperature < _GREEDY_EPS
                sampled = torch.where(greedy, ops.argmax(logits), sampled)

        pending = None
        rows = [i for i, k in enumerate(batch.num_logprobs) if k is not None]
        if rows:
            num_top = [k for k in batch.num_logprobs if k is not None]
            chosen = sampled.index_select(0, batch.logprob_rows)
            pending = _pending_logprobs(raw, chosen, rows, num_top, batch.logprob_rows)
        return SamplerOutput(sampled=sampled, _pending=pending)

    @staticmethod
    def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        temperature = batch.temperature
        if not batch.all_random:  # greedy rows are overwritten later; avoid dividing by ~0
            temperature = torch.where(temperature < _GREEDY_EPS, 1.0, temperature)
        logits = logits / temperature.unsqueeze(1)
        if not batch.no_min_p:
            logits = apply_min_p(logits, batch.min_p)
        if not batch.no_top_k:
            logits = apply_top_k(logits, batch.top_k, batch.max_top_k)
        if not batch.no_top_p:
            logits = apply_top_p(logits, batch.top_p)
        return exponential_race(logits.softmax(dim=-1), batch.generators, batch.greedy_rows)

    compute_prompt_logprobs = staticmethod(compute_prompt_logprobs)
