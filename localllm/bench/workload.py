"""The workload: how many prompts, how long, how many tokens to generate, from a seed.

Prompts are words drawn from a fixed list with `random.Random(seed)`, so a seed gives the same
prompts on every machine and Python version. Offline benchmarks turn them into exactly
`input_len` token ids with the model's tokenizer and feed the same ids to every engine; `bench
serve` sends the text (`input_len` words: about one token each for English BPE vocabularies)
and reads the real token counts from the server's usage. Every prompt starts differently, so no
prompt is served from another's prefix cache.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

WORDS = tuple(
    """the of and to in is was for on that with as by at from his her they this had not are but
    one were which all she there been has when who will more no if out so said what up its about
    into than them can only other new some could time these two may then first any my now such
    like our over man me even most made after also did many before must through back years where
    much your way well down should because each just those people how too little state good very
    make world still own see men work long get here between both life being under never day same
    another know while last might us great old year off come since against go came right used take
    three states himself few house use during without again place american around however home
    small found thought went say part once general high upon school every does got united left
    number course war until always away something fact though water less public put think almost
    hand enough far took head yet government system better set told nothing night end why called
    didn find going look asked later knew point next program city business give group toward young
    days let room president side social given present several order national possible rather
    second face per among form important often things looked early white case john become large big
    need four within felt along children saw best church ever least power development light thing
    seemed family interest want members mind country area others done turned although open god
    service problem certain kind different thus began door help sense means whole matter perhaps
    itself york times law human line above name example action company hands local show whether
    five history gave today either act feet across taken past quite anything seen having death week
    experience body word half really field am car words already themselves information tell
    together college shall money period held keep sure free seems real behind cannot miss political
    air question making office brought whose special heard major problems ago became federal moment
    study available known result street economic boy position reason change south board individual
    job areas society west close turn love community true court force full seem wife age future
    voice center woman control common policy necessary following front sometimes six girl clear
    further land run students provide feel party able mother music education university child effect
    level stood military town short morning total outside rate figure class art century washington
    north usually plan leave therefore evidence top million sound black strong hard various says
    believe type value play surface soon mean near lines table peace modern tax road red book
    personal process situation minutes increase idea english alone women gone nor food cost""".split()
)


@dataclass(frozen=True)
class Workload:
    """`num_prompts` prompts of `input_len` tokens (words for text), `output_len` tokens each."""

    num_prompts: int
    input_len: int
    output_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_prompts", "input_len", "output_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def text_prompt(self, index: int, num_words: int | None = None) -> str:
        """Prompt `index` as `num_words` (default `input_len`) words; the same for the same seed."""
        rng = random.Random(self.seed * 1_000_003 + index)
        return " ".join(rng.choice(WORDS) for _ in range(num_words or self.input_len))

    def text_prompts(self, start: int = 0) -> list[str]:
        return [self.text_prompt(start + i) for i in range(self.num_prompts)]

    def token_prompts(self, tokenizer, start: int = 0) -> list[list[int]]:
        """`num_prompts` lists of exactly `input_len` token ids (BOS first when the tokenizer adds
        one). `start` picks another block of prompts from the same seed (warm-up runs use one)."""
        return [self._token_prompt(tokenizer, start + i) for i in range(self.num_prompts)]

    def _token_prompt(self, tokenizer, index: int) -> list[int]:
        num_words = self.input_len
        while True:
            ids = tokenizer.encode(self.text_prompt(index, num_words))
            if len(ids) >= self.input_len:
                return list(ids[: self.input_len])
            num_words *= 2  # a tokenizer that merges words: draw more of them
