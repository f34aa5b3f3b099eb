"""The offline Python API on the real SmolLM2: vLLM's quickstart, prompt forms, chat, stopping,
n, seeds, logprobs, limits and validation."""

from __future__ import annotations

import gc
import math

import pytest

from localllm import LLM, SamplingParams
from localllm.errors import PromptTooLongError
from tests.engine.conftest import assert_engine_idle

MATH_CHAT = [{"role": "user", "content": "What is 2+2? Answer with a number only."}]  # ends with EOS


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


def test_vllm_quickstart_with_the_default_model(monkeypatch, tmp_path, capsys):
    # Nothing in a local store or HF cache: the alias falls back to the bundled GGUF.
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    # -- vLLM's quickstart, with the import changed (and a small KV cache for CI) --
    from localllm import LLM, SamplingParams

    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    sampling_params = SamplingParams(temperature=0.8, top_p=0.95)
    llm = LLM(kv_cache_blocks=64)
    outputs = llm.generate(prompts, sampling_params)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
    # --
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(", Generated text: ")[0] for line in lines] == [f"Prompt: {p!r}" for p in prompts]
    for output in outputs:
        completion = output.outputs[0]
        assert output.finished and completion.text and 1 <= len(completion.token_ids) <= 16
        assert completion.finish_reason in ("stop", "length")
    assert llm.engine.config.model.model == "smollm2"
    assert llm.engine.config.model.path.endswith(".gguf")
    assert_engine_idle(llm.engine)
    del llm, outputs
    gc.collect()


def test_prompt_forms_agree(smollm2_llm):
    tokenizer = smollm2_llm.get_tokenizer()
    text = "The capital of France is"
    ids = tokenizer.encode(text, add_special_tokens=False)
    by_text, by_ids, by_dict = smollm2_llm.generate(
        [text, {"prompt_token_ids": ids}, {"prompt": text}], greedy(4)
    )
    assert by_text.prompt == text and by_text.prompt_token_ids == ids
    assert by_ids.prompt is None and by_ids.prompt_token_ids == ids
    assert by_dict.prompt == text
    assert by_text.outputs[0].token_ids == by_ids.outputs[0].token_ids == by_dict.outputs[0].token_ids
    assert by_text.outputs[0].text == tokenizer.decode(by_text.outputs[0].token_ids)


def test_chat_applies_the_chat_template(smollm2_llm):
    tokenizer = smollm2_llm.get_tokenizer()
    conversations = [
        MATH_CHAT,
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
    ]
    outputs = smollm2_llm.chat(conversations, greedy(16))
    assert len(outputs) == 2
    for conversation, output in zip(conversations, outputs):
        expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if not isinstance(expected, list) else expected
        assert output.prompt_token_ids == list(expected)
        assert output.prompt.endswith("<|im_start|>assistant\n")
    assert "4" in outputs[0].outputs[0].text
    single = smollm2_llm.chat(MATH_CHAT, greedy(16))
    assert single[0].outputs[0].token_ids == outputs[0].outputs[0].token_ids


def test_finish_reasons_length_and_eos(smollm2_llm):
    eos = smollm2_llm.get_tokenizer().eos_token_id
    by_eos, by_length = smollm2_llm.chat([MATH_CHAT, MATH_CHAT], [greedy(32), greedy(3)])
    completion = by_eos.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason is None
    assert completion.token_ids[-1] == eos and eos not in completion.token_ids[:-1]
    assert "<|im_end|>" not in completion.text and completion.text.strip() != ""
    assert by_length.outputs[0].finish_reason == "length"
    assert by_length.outputs[0].token_ids == completion.token_ids[:3]


def test_stop_strings_and_stop_token_ids(smollm2_llm):
    prompt = "The capital of France is"
    base = smollm2_llm.generate(prompt, greedy(12, ignore_eos=True))[0].outputs[0]
    stop = base.text[8:11]
    assert len(stop) == 3 and base.text.find(stop) == 8, base.text
    cut, kept = smollm2_llm.generate(
        [prompt, prompt],
        [greedy(12, stop=["never appears", stop]), greedy(12, stop=stop, include_stop_str_in_output=True)],
    )
    assert cut.outputs[0].text == base.text[:8] and stop not in cut.outputs[0].text
    assert cut.outputs[0].finish_reason == "stop" and cut.outputs[0].stop_reason == stop
    assert kept.outputs[0].text == base.text[:11]
    assert kept.outputs[0].finish_reason == "stop" and kept.outputs[0].stop_reason == stop
    assert base.token_ids[: len(cut.outputs[0].token_ids)] == cut.outputs[0].token_ids

    k = 3
    stop_id = base.token_ids[k]
    first = base.token_ids.index(stop_id)
    by_id = smollm2_llm.generate(prompt, greedy(12, stop_token_ids=[stop_id]))[0].outputs[0]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == stop_id
    assert by_id.token_ids == base.token_ids[: first + 1]


def test_min_tokens_and_ignore_eos(smollm2_llm):
    natural = smollm2_llm.chat(MATH_CHAT, greedy(32))[0].outputs[0]
    n = len(natural.token_ids)
    assert natural.finish_reason == "stop" and n < 20
    longer, ignoring = smollm2_llm.chat(
        [MATH_CHAT, MATH_CHAT], [greedy(n + 10, min_tokens=n + 4), greedy(n + 3, ignore_eos=True)]
    )
    assert len(longer.outputs[0].token_ids) >= n + 4
    assert 2 not in longer.outputs[0].token_ids[: n + 4]  # EOS was held back until min_tokens
    assert ignoring.outputs[0].finish_reason == "length" and len(ignoring.outputs[0].token_ids) == n + 3
    assert ignoring.outputs[0].token_ids[:n] == natural.token_ids


def test_n_samples_with_a_seed(smollm2_llm):
    params = SamplingParams(n=2, temperature=1.0, seed=1234, max_tokens=8, ignore_eos=True)
    first = smollm2_llm.generate("Once upon a time", params)[0]
    again = smollm2_llm.generate("Once upon a time", params)[0]
    assert [c.index for c in first.outputs] == [0, 1]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert [c.text for c in first.outputs] == [c.text for c in again.outputs]
    assert first.outputs[0].token_ids != first.outputs[1].token_ids
    unseeded = smollm2_llm.generate("Once upon a time", SamplingParams(n=3, temperature=1.0, max_tokens=4))[0]
    assert len(unseeded.outputs) == 3 and all(c.finish_reason for c in unseeded.outputs)


def test_seed_is_independent_of_the_batch(smollm2_llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=8, ignore_eos=True)
    alone = smollm2_llm.generate("My favourite animal is", seeded)[0].outputs[0].token_ids
    others = [
        SamplingParams(temperature=1.0, max_tokens=6),
        greedy(10),
        SamplingParams(temperature=0.7, top_k=20, seed=7, max_tokens=8),
    ]
    outputs = smollm2_llm.generate(
        ["Tell me a joke", "My favourite animal is", "1, 2, 3,", "Paris is"], [others[0], seeded, others[1], others[2]]
    )
    assert outputs[1].outputs[0].token_ids == alone
    assert smollm2_llm.generate("My favourite animal is", seeded)[0].outputs[0].token_ids == alone


def test_logprobs(smollm2_llm):
    outputs = smollm2_llm.generate(
        ["The capital of France is", "Water is"],
        [greedy(6, logprobs=3), SamplingParams(temperature=1.0, seed=3, max_tokens=6, logprobs=3)],
    )
    for output, is_greedy in zip(outputs, (True, False)):
        completion = output.outputs[0]
        assert len(completion.logprobs) == len(completion.token_ids)
        total = 0.0
        for token, entry in zip(completion.token_ids, completion.logprobs):
            assert 3 <= len(entry) <= 4 and token in entry
            assert all(lp.logprob <= 0.0 for lp in entry.values())
            # The top 3 (ranks 1..3) plus the chosen token, which adds a 4th entry only when it
            # is not among them.
            assert {1, 2, 3} <= {lp.rank for lp in entry.values()}
            assert (len(entry) == 4) == (entry[token].rank > 3)
            if is_greedy:
                assert entry[token].rank == 1
                assert entry[token].logprob == max(lp.logprob for lp in entry.values())
            total += entry[token].logprob
        assert math.isclose(completion.cumulative_logprob, total, rel_tol=1e-6, abs_tol=1e-6)
    assert outputs[0].outputs[0].logprobs[0][outputs[0].outputs[0].token_ids[0]].decoded_token == " Paris"


def test_prompt_logprobs(smollm2_llm):
    output = smollm2_llm.generate("The capital of France is", greedy(2, prompt_logprobs=2))[0]
    ids = output.prompt_token_ids
    assert len(output.prompt_logprobs) == len(ids)
    assert output.prompt_logprobs[0] is None
    for token, entry in zip(ids[1:], output.prompt_logprobs[1:]):
        assert token in entry and 2 <= len(entry) <= 3
        assert {1, 2} <= {lp.rank for lp in entry.values()}
        assert (len(entry) == 3) == (entry[token].rank > 2)
    # The last prompt position predicts the first generated token: " Paris".
    assert output.outputs[0].token_ids[0] == 7042


def test_prompt_too_long(smollm2_llm):
    limit = smollm2_llm.engine.max_model_len
    assert limit == 1024
    with pytest.raises(PromptTooLongError) as error:
        smollm2_llm.generate({"prompt_token_ids": [28] * 1100}, greedy(4))
    assert "1100" in str(error.value) and "1024" in str(error.value)
    with pytest.raises(PromptTooLongError):
        smollm2_llm.generate(" ".join(["word"] * 1500), greedy(4))
    # A bad prompt in a batch fails the whole call and leaves nothing behind.
    with pytest.raises(PromptTooLongError):
        smollm2_llm.generate(["Hello", {"prompt_token_ids": [28] * 2000}], greedy(4))
    assert_engine_idle(smollm2_llm.engine)
    # The engine still works, and a prompt just under the limit is accepted.
    out = smollm2_llm.generate({"prompt_token_ids": [28] * (limit - 2)}, greedy(4))[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) <= limit


def test_max_model_len_caps_generation(smollm2_llm):
    limit = smollm2_llm.engine.max_model_len
    out = smollm2_llm.generate({"prompt_token_ids": [28] * (limit - 3)}, greedy(50, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == limit


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.5},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -3},
        {"min_p": 1.5},
        {"n": 0},
        {"max_tokens": 0},
        {"min_tokens": 5, "max_tokens": 2},
        {"logprobs": -1},
        {"prompt_logprobs": 100},
        {"presence_penalty": 3.0},
        {"repetition_penalty": 0.0},
        {"stop": [""]},
        {"stop_token_ids": [-1]},
    ],
)
def test_bad_sampling_params_raise_value_error(kwargs):
    with pytest.raises(ValueError) as error:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(error.value) or "max_tokens" in str(error.value)


def test_bad_generate_arguments(smollm2_llm):
    with pytest.raises(ValueError):
        smollm2_llm.generate(["a", "b"], [greedy(2)])
    with pytest.raises(ValueError):
        smollm2_llm.generate({"prompt_token_ids": [10**9]}, greedy(2))
    with pytest.raises(ValueError):
        smollm2_llm.generate({"prompt_token_ids": []}, greedy(2))
    with pytest.raises(ValueError):
        smollm2_llm.chat([{"role": "wizard", "content": "hi"}], greedy(2))


def test_interrupted_generate_and_abort_free_everything(smollm2_llm, monkeypatch):
    engine = smollm2_llm.engine
    step = engine.step
    calls = []

    def interrupted_step():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(engine, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        smollm2_llm.generate(["Hello", "Once upon a time", "1, 2, 3,"], greedy(20, ignore_eos=True))
    assert_engine_idle(engine)
    monkeypatch.undo()

    # LLMEngine.abort_request mid-run: a final "abort" output, blocks back at once.
    engine.add_request("a", "The capital of France is", greedy(20, ignore_eos=True))
    engine.add_request("b", "Water is", SamplingParams(n=2, temperature=1.0, max_tokens=20))
    for _ in range(3):
        engine.step()
    assert engine.scheduler.kv_cache_manager.num_free_blocks < engine.scheduler.kv_cache_manager.num_total_blocks
    (aborted_a,) = engine.abort_request("a")
    assert aborted_a.finished and aborted_a.outputs[0].finish_reason == "abort"
    assert len(aborted_a.outputs[0].token_ids) == 3
    (aborted_b,) = engine.abort_request(["b"])
    assert [c.finish_reason for c in aborted_b.outputs] == ["abort", "abort"]
    assert engine.abort_request("a") == []  # already gone
    assert not engine.has_unfinished_requests()
