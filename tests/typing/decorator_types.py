"""Checked by mypy --strict (tests/typing/test_typing.py), never executed.

Each ``assert_type`` fails the check if the decorated object's type drifts: the call keeps
the function's parameters, and the result is the text, the message or the structured type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypedDict

from pydantic import BaseModel
from typing_extensions import assert_type

from haikucache import Message
from haikucache._decorator import (
    AsyncLLMFunction,
    AsyncMemoized,
    LLMFunction,
    Memoized,
    llm,
    memoize,
)


class City(BaseModel):
    name: str
    population: int


class Point(TypedDict):
    x: int
    y: int


@llm(system="Answer briefly.", ttl=3600)
def explain(term: str, *, words: int = 50) -> str:
    return f"Explain {term} in {words} words."


as_callable: Callable[[str], str] = explain
assert isinstance(explain, LLMFunction)
assert_type(explain("caching"), str)
assert_type(explain("caching", words=10), str)
assert_type(explain.message("caching"), Message)
assert_type(explain.bypass("caching"), str)
assert_type(explain.stream("caching"), Iterator[str])
assert_type(explain.cache_key("caching", words=3), str)
assert_type(explain.invalidate("caching"), bool)
assert_type(explain.request("caching"), dict[str, Any])
assert_type(explain.with_options(no_cache=True)("caching"), str)
assert_type(explain.batch(["a", "b"]), list[str])
assert_type(explain.batch(["a"], return_exceptions=True), list[str | BaseException])


@llm(returns="message")
def raw(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


assert_type(raw("Hi"), Message)


@llm(output=City)
def extract(text: str) -> str:
    return text


assert_type(extract("Lyon"), City)
assert_type(extract.batch(["Lyon"]), list[City])


@llm(output=Point)
def locate(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


assert_type(locate("3, 4"), Point)


@llm()
def annotated(text: str) -> City:
    return text  # type: ignore[return-value]  # the prompt, typed as the answer


assert_type(annotated("Lyon"), City)


@llm(max_tokens=64)
async def ask(question: str, retries: int = 0) -> str:
    return question


as_coroutine_function: Callable[[str, int], Awaitable[str]] = ask
assert isinstance(ask, AsyncLLMFunction)


async def use_async() -> None:
    assert_type(await ask("Hi?"), str)
    assert_type(await ask("Hi?", retries=2), str)
    assert_type(await ask.message("Hi?"), Message)
    assert_type(ask.stream("Hi?"), AsyncIterator[str])
    assert_type(await ask.invalidate("Hi?"), bool)
    assert_type(await ask.abatch(["Hi?"]), list[str])


@memoize(ttl=60)
def area(width: int, height: int = 2) -> float:
    return width * height / 2


as_function: Callable[[int, int], float] = area
assert isinstance(area, Memoized)
assert_type(area(3), float)
assert_type(area.cache_key(3, height=4), str)
assert_type(area.invalidate(3), bool)


@memoize(namespace="reports")
async def report(name: str) -> dict[str, int]:
    return {name: 1}


assert isinstance(report, AsyncMemoized)


async def use_memo() -> None:
    assert_type(await report("q3"), dict[str, int])
    assert_type(await report.bypass("q3"), dict[str, int])


class Assistant:
    def __init__(self, tone: str) -> None:
        self.tone = tone

    @llm()
    def reply(self, message: str) -> str:
        return f"In a {self.tone} tone, reply to: {message}"

    @llm()
    async def areply(self, message: str, *, short: bool = False) -> str:
        return message


assistant = Assistant("warm")
assert_type(assistant.reply("Hello"), str)
assert_type(assistant.reply.cache_key("Hello"), str)
assert_type(Assistant.reply(assistant, "Hello"), str)


async def use_method() -> None:
    assert_type(await assistant.areply("Hello", short=True), str)
