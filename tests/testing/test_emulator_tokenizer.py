"""Unit tests of the emulator's tokenizer (the one place tests call internals directly)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from haikucache.testing import Emulator
from haikucache.testing._tokenizer import Tokenizer

PROSE = (
    "Prompt caching lets you reuse the prefix of a request. When the same system prompt, "
    "tools and documents are sent again within the lifetime of the cache entry, the API "
    "reads them from the cache at a tenth of the price of ordinary input tokens, which makes "
    "long conversations and agent loops considerably cheaper to run."
)


def test_empty_and_simple_counts() -> None:
    tok = Tokenizer()
    assert tok.count("") == 0
    assert tok.count("Hi") == 1
    assert tok.count("Be brief") == 2
    assert tok.count("Hello, world!") == 4


def test_english_prose_is_about_four_characters_per_token() -> None:
    tok = Tokenizer()
    ratio = len(PROSE) / tok.count(PROSE)
    assert 3.6 <= ratio <= 5.0
    design = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert 2.5 <= len(design) / tok.count(design) <= 5.0


def test_long_words_and_numbers_cost_more() -> None:
    tok = Tokenizer()
    assert tok.count("internationalization") > tok.count("nation")
    assert tok.count("1234567890") > tok.count("123")
    assert tok.count("日本語のテキスト") >= 8  # about one token per CJK character


def test_count_is_additive_over_word_boundaries() -> None:
    tok = Tokenizer()
    words = PROSE.split(" ")
    assert sum(tok.count((" " if i else "") + w) for i, w in enumerate(words)) == tok.count(PROSE)


def test_fast_count_matches_piece_definition_on_random_text() -> None:
    tok = Tokenizer()
    rng = random.Random(7)
    alphabet = 'ab Zé中 1234567_-.,!?\n\t  ééé{}":'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert tok.count_uncached(text) == sum(c for _, c in tok.pieces(text)), text


def test_memoised_long_texts_count_the_same() -> None:
    tok = Tokenizer()
    long = PROSE * 20
    first = tok.count(long)
    assert tok.count(long) == first == tok.count_uncached(long)


@pytest.mark.parametrize("text", ["", "a", PROSE])
def test_emulator_exposes_its_tokenizer(text: str) -> None:
    assert Emulator().count_tokens_of(text) == Tokenizer().count(text)
