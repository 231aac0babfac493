"""Telemetry as a stage of the pipeline (issue 15): OpenTelemetry spans and metrics that follow
the GenAI semantic conventions, for every call, read back with the real SDK's in-memory
exporter and metric reader, through the client against the emulator.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import haikucache
from _emulated import BASE_URL, HAIKU, SONNET, ask, emulated_client
from haikucache import (
    AsyncClient,
    Batcher,
    Budget,
    BudgetExceededError,
    Budgets,
    Client,
    ConfigurationError,
    Controls,
    Engine,
    MemoryBatchJournal,
    MemoryLedger,
    MissingDependencyError,
    OverloadedError,
    Telemetry,
)
from haikucache.testing import Emulator

SECRET = "the password is swordfish"


@dataclass
class Otel:
    """The real SDK, exporting to memory."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def telemetry(self, **options: Any) -> Telemetry:
        return Telemetry(self.tracer_provider, self.meter_provider, **options)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def only(self) -> ReadableSpan:
        (span,) = self.finished()
        return span

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, value)`` of each data point of a metric (a histogram's value is
        ``(count, sum)``)."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = (
                            (point.count, point.sum) if hasattr(point, "count") else point.value  # type: ignore[union-attr]
                        )
                        found.append((dict(point.attributes or {}), value))
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def client(emu: Emulator, telemetry: Telemetry, **engine: Any) -> Client:
    return emulated_client(emu, telemetry=telemetry, **engine)


def text_of(span: ReadableSpan) -> str:
    return " ".join(str(v) for v in (span.attributes or {}).values())


# --------------------------------------------------------------------------- answers


def test_a_miss_is_one_client_span_with_the_genai_attributes(otel: Otel) -> None:
    emu = Emulator()
    with client(emu, otel.telemetry(), namespace="tenant-acme") as c:
        message = c.messages.create(**ask(f"Tell me: {SECRET}?", temperature=0.2))
    info = message.haikucache
    assert info is not None
    span = otel.only()
    attrs = dict(span.attributes or {})
    usage = message.usage
    assert span.name == f"chat {HAIKU}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.system"] == attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == HAIKU
    assert attrs["gen_ai.response.model"] == message.model
    assert attrs["gen_ai.response.id"] == message.id
    assert attrs["gen_ai.request.max_tokens"] == 1024
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["gen_ai.response.finish_reasons"] == (message.stop_reason,)
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    # The conventions count cache reads and writes in input_tokens too.
    assert attrs["gen_ai.usage.input_tokens"] == usage.input_tokens + read + written
    assert attrs["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == read
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == written
    assert attrs["haikucache.cache"] == "miss"
    assert attrs["haikucache.cost_usd"] == pytest.approx(info.cost_usd) and info.cost_usd > 0
    assert attrs["haikucache.saved_usd"] == pytest.approx(info.saved_usd)
    # The namespace is hashed; the cache key is never recorded.
    assert "tenant-acme" not in text_of(span) and info.key not in text_of(span)
    assert len(str(attrs["haikucache.namespace_hash"])) == 16
    assert "haikucache.fallback_model" not in attrs and "error.type" not in attrs

    (tokens_in,) = [
        v for a, v in otel.points("gen_ai.client.token.usage") if a["gen_ai.token.type"] == "input"
    ]
    assert tokens_in == (1, usage.input_tokens + read + written)
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration[0]["haikucache.cache"] == "miss" and duration[1][0] == 1
    assert otel.points("haikucache.calls") == [(duration[0], 1)]
    ((_, cost),) = otel.points("haikucache.cost")
    assert cost == pytest.approx(info.cost_usd)


def test_a_hit_is_recorded_with_its_duration_and_no_tokens(otel: Otel) -> None:
    emu = Emulator()
    with client(emu, otel.telemetry()) as c:
        first = c.messages.create(**ask("Where is my bag?"))
        again = c.messages.create(**ask("Where is my bag?"))
    assert again.haikucache is not None and again.haikucache.cache == "hit"
    assert emu.requests["messages"] == 1
    _, hit = otel.finished()
    attrs = dict(hit.attributes or {})
    assert attrs["haikucache.cache"] == "hit"
    assert attrs["haikucache.cost_usd"] == 0
    assert attrs["haikucache.saved_usd"] == pytest.approx(first.haikucache.cost_usd)
    assert attrs["gen_ai.response.id"] == again.id
    # Nothing was sent, so no tokens were used.
    assert not any(name.startswith("gen_ai.usage.") for name in attrs)
    calls = {a["haikucache.cache"]: v for a, v in otel.points("haikucache.calls")}
    assert calls == {"miss": 1, "hit": 1}
    durations = {
        a["haikucache.cache"]: v for a, v in otel.points("gen_ai.client.operation.duration")
    }
    assert durations["hit"][0] == 1
    assert all(a["haikucache.cache"] == "miss" for a, _ in otel.points("gen_ai.client.token.usage"))
    ((_, saved),) = [(a, v) for a, v in otel.points("haikucache.saved")]
    assert saved == pytest.approx(attrs["haikucache.saved_usd"])


def test_the_async_door_is_recorded_the_same_way(otel: Otel) -> None:
    emu = Emulator()

    async def run() -> None:
        async with AsyncClient(
            api_key="sk-test",
            base_url=BASE_URL,
            transport=emu.transport(),
            engine=Engine(ledger=MemoryLedger(), store="memory", telemetry=otel.telemetry()),
            max_retries=0,
        ) as c:
            await c.messages.create(**ask("Async?"))
            await c.messages.create(**ask("Async?"))

    asyncio.run(run())
    assert [s.attributes["haikucache.cache"] for s in otel.finished()] == ["miss", "hit"]  # type: ignore[index]


# --------------------------------------------------------------------------- streams


def test_a_streamed_answer_ends_its_span_when_accounted_and_a_replay_at_once(otel: Otel) -> None:
    emu = Emulator()
    with client(emu, otel.telemetry()) as c:
        with c.messages.stream(**ask("Stream this?")) as stream:
            events = iter(stream)
            next(events)
            assert otel.finished() == []  # still streaming: the span is open
            for _ in events:
                pass
            final = stream.get_final_message()
        (span,) = otel.finished()
        attrs = dict(span.attributes or {})
        assert attrs["haikucache.cache"] == "miss"
        assert attrs["gen_ai.usage.output_tokens"] == final.usage.output_tokens
        assert attrs["haikucache.cost_usd"] == pytest.approx(final.haikucache.cost_usd)  # type: ignore[union-attr]
        c.messages.create(**ask("Stream this?"), stream=True)  # a replayed hit
        replay = otel.finished()[-1]
        assert replay.attributes["haikucache.cache"] == "hit"  # type: ignore[index]
    assert len(otel.points("gen_ai.client.operation.duration")) == 2


def test_an_error_inside_a_stream_ends_the_span_as_an_error(otel: Otel) -> None:
    emu = Emulator()
    emu.inject("stream_error", times=1)
    with client(emu, otel.telemetry()) as c:
        with (
            pytest.raises(haikucache.APIStatusError),
            c.messages.stream(**ask("Stream?")) as stream,
        ):
            for _ in stream:
                pass
        del stream
        gc.collect()
    span = otel.only()
    assert span.status.status_code is StatusCode.ERROR
    # The client tells the tap how the stream broke off: an overloaded_error event.
    assert span.attributes["error.type"] == "529"  # type: ignore[index]


def test_a_stream_refused_at_another_door_ends_the_span_with_its_status(otel: Otel) -> None:
    # The SDK door tells the tap when a streamed request gets an error status.
    anthropic = pytest.importorskip("anthropic")
    import haikucache.anthropic as hca

    emu = Emulator()
    emu.inject("overloaded", times=1)
    sdk = anthropic.Anthropic(
        api_key="sk-test",
        base_url=BASE_URL,
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
        max_retries=0,
    )
    engine = Engine(ledger=MemoryLedger(), store="memory", telemetry=otel.telemetry())
    wrapped = hca.wrap(sdk, engine=engine)
    with pytest.raises(anthropic.APIStatusError):
        wrapped.messages.create(**ask("Stream?"), stream=True)
    span = otel.only()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "529"  # type: ignore[index]


def test_a_stream_dropped_unfinished_ends_its_span_as_incomplete(otel: Otel) -> None:
    emu = Emulator()
    with client(emu, otel.telemetry()) as c:
        with c.messages.stream(**ask("Stream this?")) as stream:
            next(iter(stream))
        del stream
        gc.collect()
    span = otel.only()
    assert span.attributes["error.type"] == "incomplete_stream"  # type: ignore[index]


# --------------------------------------------------------------------------- failures


def test_an_upstream_error_ends_the_span_with_error_type(otel: Otel) -> None:
    emu = Emulator()
    emu.inject("overloaded", times=1)
    with client(emu, otel.telemetry()) as c, pytest.raises(OverloadedError):
        c.messages.create(**ask(f"Tell me: {SECRET}?"))
    span = otel.only()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "OverloadedError"  # type: ignore[index]
    assert span.events == ()  # the exception's message is content: not recorded by default
    ((attrs, (count, _)),) = otel.points("gen_ai.client.operation.duration")
    assert attrs["error.type"] == "OverloadedError" and count == 1


def test_a_budget_refusal_is_recorded_as_an_error_before_anything_is_sent(otel: Otel) -> None:
    emu = Emulator()
    controls = Controls(budgets=Budgets([Budget(0.0)]))
    with client(emu, otel.telemetry(), controls=controls) as c, pytest.raises(BudgetExceededError):
        c.messages.create(**ask("Too dear?"))
    assert emu.requests["messages"] == 0
    span = otel.only()
    assert span.attributes["error.type"] == "BudgetExceededError"  # type: ignore[index]
    assert "gen_ai.usage.input_tokens" not in (span.attributes or {})
    assert otel.points("haikucache.cost") == []


def test_a_fallback_answer_names_the_model_that_gave_it(otel: Otel) -> None:
    emu = Emulator()
    emu.inject("overloaded", times=1)
    with client(emu, otel.telemetry(), controls=Controls(fallback=(SONNET,))) as c:
        message = c.messages.create(**ask("Where is my bag?"))
    span = otel.only()
    attrs = dict(span.attributes or {})
    assert span.name == f"chat {HAIKU}"
    assert attrs["gen_ai.request.model"] == HAIKU
    assert attrs["haikucache.fallback_model"] == SONNET
    assert str(attrs["gen_ai.response.model"]).startswith(SONNET) and message.model.startswith(
        SONNET
    )
    assert "error.type" not in attrs


def test_telemetry_never_fails_a_call(otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("the collector is down")

    otel.tracer_provider.add_span_processor(Broken())
    emu = Emulator()
    with client(emu, otel.telemetry()) as c, caplog.at_level(logging.WARNING):
        message = c.messages.create(**ask("Still answered?"))
    assert message.stop_reason == "end_turn"
    assert "telemetry failed" in caplog.text
    assert [v for _, v in otel.points("haikucache.calls")] == [1]  # the metrics still count it


# --------------------------------------------------------------------------- batches


def test_batch_answers_hits_and_twins_are_each_recorded(otel: Otel) -> None:
    emu = Emulator(batch_processing_seconds=0.2)
    with client(emu, otel.telemetry()) as c:
        c.messages.create(**ask("Cached already?"))
        with Batcher(
            c,
            journal=MemoryBatchJournal(),
            poll_interval=0.05,
            max_poll_interval=0.1,
            max_wait=0.05,
        ) as batcher:
            answers = batcher.map([ask("Batched?"), ask("Batched?"), ask("Cached already?")])
    assert all(a.haikucache is not None for a in answers)
    spans = otel.finished()[1:]  # after the realtime call that filled the cache
    by_cache = sorted(str((s.attributes or {})["haikucache.cache"]) for s in spans)
    assert by_cache == ["hit", "miss", "shared"]
    (batched,) = [s for s in spans if (s.attributes or {})["haikucache.cache"] == "miss"]
    attrs = dict(batched.attributes or {})
    assert attrs["haikucache.batch"] is True
    assert attrs["gen_ai.usage.output_tokens"] > 0
    # A batch answer's wait is the batch's, not the call's: no duration is recorded for it.
    durations = {
        a["haikucache.cache"]: v[0] for a, v in otel.points("gen_ai.client.operation.duration")
    }
    assert durations == {"miss": 1, "hit": 1}  # the realtime miss and the batcher's hit


# --------------------------------------------------------------------------- content


def test_no_prompt_or_answer_text_by_default_and_both_on_request(otel: Otel) -> None:
    emu = Emulator()
    with client(emu, otel.telemetry()) as c:
        c.messages.create(**ask(f"Tell me: {SECRET}?", system="Be brief."))
    assert SECRET not in text_of(otel.only()) and "Be brief" not in text_of(otel.only())
    otel.spans.clear()
    with client(emu, otel.telemetry(capture_content=True), store=None) as c:
        message = c.messages.create(**ask(f"Tell me: {SECRET}?", system="Be brief."))
    attrs = dict(otel.only().attributes or {})
    assert SECRET in str(attrs["gen_ai.input.messages"])
    assert "Be brief." in str(attrs["gen_ai.system_instructions"])
    answer = message.content[0].text
    assert answer and answer[:20] in str(attrs["gen_ai.output.messages"])


# --------------------------------------------------------------------------- configuration


def test_telemetry_is_configured_on_the_engine() -> None:
    with pytest.raises(ConfigurationError):
        Engine(telemetry="otel")  # type: ignore[arg-type]
    assert Engine(ledger=False).telemetry is None


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(MissingDependencyError, match=r"haikucache\[otel\]"):
        Telemetry()


def test_prompt_cache_reads_and_writes_are_counted_apart(otel: Otel) -> None:
    emu = Emulator()
    system = " ".join(f"Rule {i}: answer politely and cite the fare table." for i in range(600))
    with client(emu, otel.telemetry(), store=None) as c:
        first = c.messages.create(**ask("Fare?", system=system))
        second = c.messages.create(**ask("Fare again?", system=system))
    written = first.usage.cache_creation_input_tokens or 0
    read = second.usage.cache_read_input_tokens or 0
    assert written > 0 and read > 0
    one, two = (dict(s.attributes or {}) for s in otel.finished())
    assert one["gen_ai.usage.cache_creation.input_tokens"] == written
    assert two["gen_ai.usage.cache_read.input_tokens"] == read
    assert two["gen_ai.usage.input_tokens"] == (
        second.usage.input_tokens + read + (second.usage.cache_creation_input_tokens or 0)
    )
    tokens: dict[str, int] = {}
    for attrs, value in otel.points("haikucache.tokens"):
        kind = attrs["gen_ai.token.type"]
        tokens[kind] = tokens.get(kind, 0) + value
    assert tokens["cache_read"] == read
    assert tokens["cache_creation"] == written + (second.usage.cache_creation_input_tokens or 0)
