"""The emulator's own tokenizer.

It is deliberately *not* the engine's estimator (so no test passes by construction) and not
``len(text) / 4`` either: text is cut into word, number, punctuation and whitespace pieces
the way BPE pre-tokenizers do, and each piece costs a number of tokens that grows with its
length. On English prose that lands near 4 characters per token, like the real tokenizer
(reference §2: "~4 characters or ~0.75 English words per token").

Pieces never span the boundary between two strings when the second starts with a space, a
newline or a capital letter after punctuation, so the answer generator can build text whose
count it knows in advance.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

__all__ = ["Tokenizer"]

# One alternative per piece class; the group number tells the class (see _cost below).
_PIECE = re.compile(
    r"( ?[A-Za-z]+)"  # 1: ASCII word, with the single space before it
    r"|( ?[0-9]+)"  # 2: digits
    r"|( ?[^\W\d_A-Za-z]+)"  # 3: other letters (accented, CJK, …)
    r"|( ?[^\w\s]+|_+)"  # 4: punctuation run
    r"|(\s+)",  # 5: whitespace run not glued to what follows
)
# The same pieces without groups: ``findall`` then returns plain strings at C speed.
_PIECE_FLAT = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\W\d_A-Za-z]+| ?[^\w\s]+|_+|\s+")
# Maximal runs that cost more than one token. Each is always a whole piece (or a whole
# piece minus its leading space), so the fast count equals the piece-by-piece count.
_LONG_WORD = re.compile(r"[A-Za-z]{7,}")
_LONG_NUMBER = re.compile(r"[0-9]{4,}")
_OTHER_LETTERS = re.compile(r"[^\W\d_A-Za-z]+")
_LONG_PUNCT = re.compile(r"[^\w\s]{3,}|_{3,}")
_LONG_SPACE = re.compile(r"\s{16,}")

# Texts at least this long are memoised: system prompts and documents are sent again and
# again, and re-counting 20 kB on every request would dominate the emulator's cost.
_MEMO_MIN_CHARS = 256
_MEMO_MAX_ENTRIES = 4096


def _letters_cost(n: int) -> int:
    # Common short words are one token; long ones split into ~6-letter chunks.
    return (n + 5) // 6


def _digits_cost(n: int) -> int:
    return (n + 2) // 3


def _other_cost(run: str) -> int:
    # Non-ASCII letters are expensive: about one token per 3 UTF-8 bytes.
    return max(1, (len(run.encode("utf-8")) + 2) // 3)


def _punct_cost(n: int) -> int:
    return (n + 1) // 2


def _space_cost(n: int) -> int:
    # A newline or indentation run is one token, very long runs a few.
    return 1 + n // 16


def _cost(kind: int, piece: str) -> int:
    core = piece[1:] if kind != 5 and piece[0] == " " else piece
    if kind == 1:
        return _letters_cost(len(core))
    if kind == 2:
        return _digits_cost(len(core))
    if kind == 3:
        return _other_cost(core)
    if kind == 4:
        return _punct_cost(len(core))
    return _space_cost(len(core))


class Tokenizer:
    """Deterministic, tokenizer-like counting of text.

    Thread-safe; long texts are memoised (bounded LRU) because the same system prompt or
    document is typically counted on every request.
    """

    def __init__(self) -> None:
        self._memo: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (0 for the empty string)."""
        if len(text) < _MEMO_MIN_CHARS:
            return self.count_uncached(text)
        with self._lock:
            hit = self._memo.get(text)
            if hit is not None:
                self._memo.move_to_end(text)
                return hit
        n = self.count_uncached(text)
        with self._lock:
            self._memo[text] = n
            if len(self._memo) > _MEMO_MAX_ENTRIES:
                self._memo.popitem(last=False)
        return n

    @staticmethod
    def count_uncached(text: str) -> int:
        """Count without the memo: one token per piece, plus the extra of long pieces."""
        total = len(_PIECE_FLAT.findall(text))
        for run in _LONG_WORD.findall(text):
            total += _letters_cost(len(run)) - 1
        for run in _LONG_NUMBER.findall(text):
            total += _digits_cost(len(run)) - 1
        if not text.isascii():
            for run in _OTHER_LETTERS.findall(text):
                total += _other_cost(run) - 1
        for run in _LONG_PUNCT.findall(text):
            total += _punct_cost(len(run)) - 1
        for run in _LONG_SPACE.findall(text):
            total += _space_cost(len(run)) - 1
        return total

    @staticmethod
    def pieces(text: str) -> list[tuple[str, int]]:
        """The pieces of ``text`` with the tokens each costs (the reference definition)."""
        out: list[tuple[str, int]] = []
        for match in _PIECE.finditer(text):
            kind = match.lastindex or 5
            piece = match.group(kind)
            out.append((piece, _cost(kind, piece)))
        return out
