"""Mistakes mypy must report (tests/typing/test_typing.py), never executed.

Every line ending in ``# E:`` and error codes must produce exactly those errors, and no other
line any error.
"""

from __future__ import annotations

from pydantic import BaseModel

from haikucache._decorator import llm, memoize


class City(BaseModel):
    name: str


@llm(system="Answer briefly.")
def explain(term: str, *, words: int = 50) -> str:
    return f"Explain {term} in {words} words."


explain(42)  # E: arg-type
explain()  # E: call-arg
explain("caching", word=3)  # E: call-arg
explain.cache_key("caching", 3)  # E: call-arg
explain.stream(b"caching")  # E: arg-type
length: int = explain("caching")  # E: assignment


@llm(output=City)
def extract(text: str) -> str:
    return text


city_name: int = extract("Lyon").name  # E: assignment
nickname = extract("Lyon").nickname  # E: attr-defined


@llm  # E: call-overload
def bare(text: str) -> str:
    return text


@llm(max_tokens="many")  # E: call-overload, untyped-decorator
def wrong_option(text: str) -> str:
    return text


@llm()
async def ask(question: str) -> str:
    return question


async def use() -> None:
    text: str = ask("Hi?")  # E: assignment
    await ask.invalidate(1)  # E: arg-type
    print(text)


@memoize(ttl=60)
def area(width: int, height: int = 2) -> float:
    return width * height / 2


area("3")  # E: arg-type
label: str = area(3)  # E: assignment


class Assistant:
    @llm()
    def reply(self, message: str) -> str:
        return message


Assistant().reply(3)  # E: arg-type
Assistant().reply("a", "b")  # E: call-arg
