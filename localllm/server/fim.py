"""Fill-in-the-middle: which FIM tokens a model's vocabulary has, and the prompt they make.

A code model trained for FIM sees `<prefix-token>PREFIX<suffix-token>SUFFIX<middle-token>` and
writes the middle. Models without such tokens (SmolLM2, most chat models) cannot do it; a request
with a suffix for them is a 400, never a silent plain completion.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FimFormat:
    prefix: str
    suffix: str
    middle: str
    template: str = "{pre}{prefix}{suf}{suffix}{mid}"  # prefix-suffix-middle order

    def build(self, prefix: str, suffix: str) -> str:
        return self.template.format(pre=self.prefix, suf=self.suffix, mid=self.middle, prefix=prefix, suffix=suffix)

    def go_template(self) -> str:
        """The same prompt as an Ollama (Go) template fragment, so clients that look for
        `.Suffix` in /api/show's template see FIM support."""
        return self.build("{{ .Prompt }}", "{{ .Suffix }}")


# NOTE: order matters only if a vocabulary had two of these sets; none of the known ones does.
KNOWN_FORMATS = (
    FimFormat("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3-Coder
    FimFormat("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder(2), SmolLM v1, Granite code
    FimFormat("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    FimFormat("<PRE>", "<SUF>", "<MID>", template="{pre} {prefix} {suf}{suffix} {mid}"),  # CodeLlama
)


def detect_fim(tokenizer) -> FimFormat | None:
    """The FIM format whose three tokens are all in the tokenizer's vocabulary, if any."""
    if tokenizer is None:
        return None
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    for fmt in KNOWN_FORMATS:
        if fmt.prefix in vocab and fmt.suffix in vocab and fmt.middle in vocab:
            return fmt
    return None
