import pytest

from localllm.bench.workload import WORDS, Workload
from tests.bench.conftest import WordTokenizer


def test_same_seed_same_prompts_other_seed_other_prompts():
    a = Workload(8, 20, 4, seed=3)
    assert a.text_prompts() == Workload(8, 20, 4, seed=3).text_prompts()
    assert a.text_prompts() != Workload(8, 20, 4, seed=4).text_prompts()
    tok = WordTokenizer()
    assert a.token_prompts(tok) == Workload(8, 20, 4, seed=3).token_prompts(tok)


def test_prompts_have_the_asked_length_and_all_differ():
    w = Workload(16, 12, 4, seed=0)
    texts = w.text_prompts()
    assert all(len(t.split()) == 12 and set(t.split()) <= set(WORDS) for t in texts)
    assert len({t.split()[0] + t.split()[1] for t in texts}) == 16  # differ from the start: no shared prefix
    ids = w.token_prompts(WordTokenizer())
    assert all(len(p) == 12 for p in ids)


def test_known_prompt_is_pinned():
    # A change to the word list or the draw changes every published figure's workload: on purpose only.
    w = Workload(1, 6, 1, seed=0)
    assert w.text_prompts() == ["top going control book side not"]
    assert w.text_prompt(0, 12).startswith("top going control book side not ")  # longer draws extend it


def test_start_gives_another_block_of_the_same_sequence():
    w = Workload(4, 10, 2, seed=1)
    both = Workload(8, 10, 2, seed=1).text_prompts()
    assert w.text_prompts() == both[:4] and w.text_prompts(start=4) == both[4:]


def test_tokenizer_that_merges_words_still_gives_exact_length():
    class Pairs:  # one token per two words
        def encode(self, text):
            words = text.split()
            return [len(a + b) for a, b in zip(words[::2], words[1::2])]

    prompts = Workload(3, 9, 1, seed=2).token_prompts(Pairs())
    assert [len(p) for p in prompts] == [9, 9, 9]


@pytest.mark.parametrize("field, value", [("num_prompts", 0), ("input_len", -1), ("output_len", 0),
                                          ("input_len", 2.5), ("seed", -1)])
def test_bad_values_are_one_clear_error(field, value):
    args = {"num_prompts": 2, "input_len": 4, "output_len": 4, "seed": 0, field: value}
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        Workload(**args)
