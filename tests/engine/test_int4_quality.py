"""The CPU int4 path (quantization="auto" on a Q4 GGUF) against the float32 path on SmolLM2:
teacher-forced top-1 agreement over a fixed text, and a sane greedy answer."""

import pytest

from localllm import LLM, SamplingParams
from localllm.layers.int4_cpu_linear import int4_kernel_available

pytestmark = pytest.mark.skipif(not int4_kernel_available(), reason="torch has no int4 CPU kernel")

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)


def top1_predictions(llm: LLM) -> list[int]:
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    (output,) = llm.generate([TEXT], params)
    entries = output.prompt_logprobs[1:]
    return [min(entry.items(), key=lambda kv: kv[1].rank)[0] for entry in entries]


def test_int4_agrees_with_float32():
    float_llm = LLM(model="smollm2", quantization=None, dtype="float32", max_model_len=512)
    reference = top1_predictions(float_llm)
    del float_llm
    int4_llm = LLM(model="smollm2", quantization="auto", max_model_len=512)
    assert int4_llm.engine.runner.quantization == "int4"
    predictions = top1_predictions(int4_llm)
    agreement = sum(a == b for a, b in zip(predictions, reference)) / len(reference)
    assert agreement >= 0.9, f"top-1 agreement {agreement:.2%}"
    answer = int4_llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0, max_tokens=16)
    )[0]
    assert "Paris" in answer.outputs[0].text
    kv = int4_llm.engine.scheduler.kv_cache_manager
    assert kv.num_free_blocks == kv.num_total_blocks
