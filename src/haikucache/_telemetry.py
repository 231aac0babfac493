"""Telemetry as one stage of the pipeline: an OpenTelemetry span and metrics for every call,
following the GenAI semantic conventions.

::

    exchange     start(call)     a CLIENT span ``chat {model}``, current while the call runs
                                 (an HTTP instrumentation's spans nest under it)
                   …             lookup, controls, the door's send, account, store
                 finish(outcome) cache status, usage, cost, saving; then the metrics
                 an exception    ``error.type`` (the exception's class name), status ERROR
    open_stream  a replay is recorded at once; a live stream's span stays open until its
                 tap accounts the answer or fails (or is dropped unfinished)
    deliver      a batch answer, recorded at once (``haikucache.batch = true``)

Every door gets this because the pipeline runs it (see :mod:`haikucache._pipeline`);
configure it on the engine: ``Engine(telemetry=Telemetry())``.

No prompt or answer text reaches telemetry unless ``capture_content=True``; the namespace
is a hash, and the cache key is never recorded. Telemetry never fails a call: an error in
it is logged and the call goes on. OpenTelemetry is an optional extra
(``pip install 'haikucache[otel]'``), imported only when a :class:`Telemetry` is built.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from ._exceptions import MissingDependencyError
from ._version import __version__

if TYPE_CHECKING:
    from ._engine import CallInfo, PreparedCall
    from ._pipeline import Outcome, Reply

__all__ = ["CallSpan", "Telemetry"]

logger = logging.getLogger("haikucache")

T = TypeVar("T")

# The GenAI semantic conventions' names (as of semantic-conventions 0.66b2 / semconv 1.38,
# where the cache counts are ``gen_ai.usage.cache_*.input_tokens``). Written out rather than
# imported: the conventions' Python module is incubating and not a dependency.
OPERATION = "gen_ai.operation.name"
SYSTEM = "gen_ai.system"  # deprecated for gen_ai.provider.name; still what many backends read
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_TOP_K = "gen_ai.request.top_k"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
ERROR_TYPE = "error.type"

CACHE = "haikucache.cache"
COST = "haikucache.cost_usd"
SAVED = "haikucache.saved_usd"
NAMESPACE_HASH = "haikucache.namespace_hash"
FALLBACK_MODEL = "haikucache.fallback_model"
BATCH = "haikucache.batch"
SIMILARITY = "haikucache.similarity"

# The bucket boundaries the GenAI metric conventions advise.
_TOKEN_BUCKETS = [4**i for i in range(14)]
_DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]

#: ``error.type`` of a stream whose tap was dropped before the answer completed (the caller
#: stopped reading, or the connection ended before ``message_stop``).
INCOMPLETE_STREAM = "incomplete_stream"
_OTHER = "_OTHER"
_NOW: Any = object()


class Telemetry:
    """OpenTelemetry spans and metrics for every call of an engine.

    Each call is one span named ``chat {model}`` (kind CLIENT) with the GenAI semantic
    conventions' attributes (``gen_ai.operation.name``, ``gen_ai.provider.name``,
    ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*`` including cache
    reads and writes, ``gen_ai.response.finish_reasons``, ``error.type``) and haikucache's
    own (``haikucache.cache``, ``haikucache.cost_usd``, ``haikucache.saved_usd``,
    ``haikucache.namespace_hash``, ``haikucache.fallback_model``, ``haikucache.batch``).

    Metrics: ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``
    (histograms), ``haikucache.calls`` by cache status, ``haikucache.tokens`` by token type
    (``input`` uncached, ``cache_read``, ``cache_creation``, ``output``),
    ``haikucache.cost`` and ``haikucache.saved`` (USD; ``saved`` is an up-down counter, since
    a prompt-cache write costs more than it saves on its first call).

    Args:
        tracer_provider: where spans go (default: the global one, set by the application).
        meter_provider: where metrics go (default: the global one).
        capture_content: also record the request's messages and system prompt and the answer
            (``gen_ai.input.messages``, ``gen_ai.system_instructions``,
            ``gen_ai.output.messages``). Off by default: telemetry backends are rarely
            cleared for prompt text.

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """

    def __init__(
        self,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        *,
        capture_content: bool = False,
    ) -> None:
        try:
            from opentelemetry import context, metrics, trace
        except ImportError as exc:
            raise MissingDependencyError("opentelemetry-api", "otel", "Telemetry") from exc
        self.capture_content = bool(capture_content)
        self._context = context
        self._trace = trace
        self._tracer = trace.get_tracer("haikucache", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("haikucache", __version__, meter_provider=meter_provider)
        self._token_usage = _histogram(
            meter,
            "gen_ai.client.token.usage",
            "{token}",
            "Number of input and output tokens used.",
            _TOKEN_BUCKETS,
        )
        self._duration = _histogram(
            meter,
            "gen_ai.client.operation.duration",
            "s",
            "GenAI operation duration.",
            _DURATION_BUCKETS,
        )
        self._calls = meter.create_counter(
            "haikucache.calls", unit="{call}", description="Calls, by cache status."
        )
        self._tokens = meter.create_counter(
            "haikucache.tokens",
            unit="{token}",
            description="Tokens billed upstream, by type (input is the uncached part).",
        )
        self._cost = meter.create_counter(
            "haikucache.cost", unit="USD", description="Dollars billed upstream."
        )
        self._saved = meter.create_up_down_counter(
            "haikucache.saved",
            unit="USD",
            description="Dollars saved against the same calls without haikucache.",
        )

    def __repr__(self) -> str:
        return f"Telemetry(capture_content={self.capture_content!r})"

    # -- the pipeline's way in ------------------------------------------------------------

    def start(self, call: PreparedCall) -> CallSpan:
        """Open the span of a call that is about to run (used by the pipeline).

        Never raises: if the span cannot be started, the call runs untraced.
        """
        try:
            return CallSpan(self, call, self._open(call, None))
        except Exception:
            _failed()
            return CallSpan(self, call, None)

    def record(self, outcome: Outcome[Any], *, started_ns: int | None = None) -> None:
        """Record a call the pipeline finished at once: a batch answer, or a hit a door
        served itself (used by the pipeline; never raises).

        Args:
            started_ns: when the call started (``time.time_ns()``); ``None``: no duration
                is known (a batch answer's wait is the batch's, not this call's).
        """
        try:
            started = None
            if started_ns is not None:
                started = time.perf_counter() - max(time.time_ns() - started_ns, 0) / 1e9
            span = CallSpan(self, outcome.call, self._open(outcome.call, started_ns), started)
            span.finish(outcome)
        except Exception:
            _failed()

    # -- the span's figures ---------------------------------------------------------------

    def _open(self, call: PreparedCall, started_ns: int | None) -> Any:
        body = call.body
        attributes: dict[str, Any] = {
            OPERATION: "chat",
            SYSTEM: "anthropic",
            PROVIDER: "anthropic",
            REQUEST_MODEL: call.model,
            NAMESPACE_HASH: _namespace_hash(call.namespace),
        }
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int):
            attributes[REQUEST_MAX_TOKENS] = max_tokens
        for name, attribute in (
            ("temperature", REQUEST_TEMPERATURE),
            ("top_p", REQUEST_TOP_P),
            ("top_k", REQUEST_TOP_K),
        ):
            value = body.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[attribute] = value
        if self.capture_content:
            attributes[INPUT_MESSAGES] = _dumps(
                [_message_parts(m) for m in body.get("messages") or () if isinstance(m, Mapping)]
            )
            system = body.get("system")
            if system:
                attributes[SYSTEM_INSTRUCTIONS] = _dumps(_parts(system))
        return self._tracer.start_span(
            f"chat {call.model}",
            kind=self._trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=started_ns,
        )

    def _answered(
        self,
        span: Any,
        call: PreparedCall,
        source: str,
        message: Mapping[str, Any] | None,
        info: CallInfo | None,
        *,
        answered_by: str,
        seconds: float | None,
    ) -> None:
        usage = message.get("usage") if message is not None else None
        usage = usage if isinstance(usage, Mapping) and source == "miss" else None
        response_model = message.get("model") if message is not None else None
        attributes: dict[str, Any] = {CACHE: source}
        if isinstance(response_model, str):
            attributes[RESPONSE_MODEL] = response_model
        if message is not None:
            if isinstance(message.get("id"), str):
                attributes[RESPONSE_ID] = message["id"]
            stop = message.get("stop_reason")
            if isinstance(stop, str):
                attributes[FINISH_REASONS] = (stop,)
            if self.capture_content:
                attributes[OUTPUT_MESSAGES] = _dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": _parts(message.get("content") or ()),
                            "finish_reason": stop if isinstance(stop, str) else "",
                        }
                    ]
                )
        if answered_by != call.model:
            attributes[FALLBACK_MODEL] = answered_by
        if info is not None and info.batch:
            attributes[BATCH] = True
        if info is not None:
            attributes[COST] = info.cost_usd
            attributes[SAVED] = info.saved_usd
            if info.similarity is not None:
                attributes[SIMILARITY] = info.similarity
        tokens = _tokens(usage) if usage is not None else None
        if tokens is not None:
            uncached, read, written, output = tokens
            # The conventions count every input token in input_tokens (cache reads and
            # writes too), and each cache count again on its own.
            attributes[INPUT_TOKENS] = uncached + read + written
            attributes[OUTPUT_TOKENS] = output
            attributes[CACHE_READ_TOKENS] = read
            attributes[CACHE_CREATION_TOKENS] = written
        if span is not None:
            _end(span, attributes)

        metric = {
            OPERATION: "chat",
            PROVIDER: "anthropic",
            REQUEST_MODEL: call.model,
            CACHE: source,
        }
        if isinstance(response_model, str):
            metric[RESPONSE_MODEL] = response_model
        if seconds is not None:
            self._duration.record(seconds, metric)
        self._calls.add(1, metric)
        if tokens is not None:
            uncached, read, written, output = tokens
            self._token_usage.record(uncached + read + written, {**metric, TOKEN_TYPE: "input"})
            self._token_usage.record(output, {**metric, TOKEN_TYPE: "output"})
            for kind, count in (
                ("input", uncached),
                ("cache_read", read),
                ("cache_creation", written),
                ("output", output),
            ):
                if count:
                    self._tokens.add(count, {**metric, TOKEN_TYPE: kind})
        if info is not None:
            if info.cost_usd > 0:
                self._cost.add(info.cost_usd, metric)
            if info.saved_usd:
                self._saved.add(info.saved_usd, metric)

    def _failed(
        self,
        span: Any,
        call: PreparedCall,
        error_type: str,
        exc: BaseException | None,
        seconds: float | None,
    ) -> None:
        if span is not None:
            try:
                if exc is not None and self.capture_content:
                    # An exception's message may quote the request: content, so opt-in.
                    span.record_exception(exc)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error_type))
            except Exception:
                _failed()
            _end(span, {CACHE: "miss", ERROR_TYPE: error_type})
        metric = {
            OPERATION: "chat",
            PROVIDER: "anthropic",
            REQUEST_MODEL: call.model,
            CACHE: "miss",
            ERROR_TYPE: error_type,
        }
        if seconds is not None:
            self._duration.record(seconds, metric)
        self._calls.add(1, metric)


class CallSpan:
    """One call's span, from the moment the pipeline starts it until the call ends.

    The pipeline uses it as a context manager around the call (the span is current
    inside, so spans of the door's HTTP client nest under it), ends it with :meth:`finish`,
    or hands it to a stream's tap with :meth:`keep`. An exception that leaves the ``with``
    block ends it with ``error.type``. Nothing here raises into the call.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        call: PreparedCall,
        span: Any,
        started: float | None = _NOW,
    ) -> None:
        self._telemetry = telemetry
        self.call = call
        self._span = span
        # perf_counter() at the start; None: no duration to record.
        self._started = time.perf_counter() if started is _NOW else started
        self._token: Any = None
        self._ended = False
        self._kept = False
        self._status: int | None = None

    def __enter__(self) -> CallSpan:
        if self._span is not None:
            try:
                telemetry = self._telemetry
                self._token = telemetry._context.attach(
                    telemetry._trace.set_span_in_context(self._span)
                )
            except Exception:
                _failed()
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            try:
                self._telemetry._context.detach(token)
            except Exception:
                _failed()
        if exc is not None:
            self.error(exc)
        elif not self._kept:
            # The block left without an outcome (it should not): end the span all the same.
            self.error(None)

    # -- the door's send, watched for the status of a reply that is not a message --------

    def watch(
        self, send: Callable[[dict[str, Any]], Reply[T]]
    ) -> Callable[[dict[str, Any]], Reply[T]]:
        """``send``, noting the status of each reply (an error reply's ``error.type``)."""

        @functools.wraps(send)
        def sending(body: dict[str, Any]) -> Reply[T]:
            reply = send(body)
            self._status = reply.status
            return reply

        return sending

    def awatch(
        self, send: Callable[[dict[str, Any]], Awaitable[Reply[T]]]
    ) -> Callable[[dict[str, Any]], Awaitable[Reply[T]]]:
        """The async twin of :meth:`watch`."""

        @functools.wraps(send)
        async def sending(body: dict[str, Any]) -> Reply[T]:
            reply = await send(body)
            self._status = reply.status
            return reply

        return sending

    # -- ends -----------------------------------------------------------------------------

    def finish(self, outcome: Outcome[Any]) -> None:
        """The call's outcome: an answer (from wherever it came), or an error reply the
        door passes on as it is."""
        if outcome.message is None:
            self.failed(self._status)
            return
        self.answered(
            outcome.message, outcome.info, source=outcome.source, model=outcome.call.model
        )

    def keep(self, owner: object) -> CallSpan:
        """Keep the span open past the ``with`` block, until :meth:`answered` or
        :meth:`failed`; if ``owner`` (a stream's tap) is dropped first, the span ends with
        ``error.type = "incomplete_stream"``."""
        self._kept = True
        if self._span is not None:
            try:
                finalizer = weakref.finalize(owner, self._incomplete)
                finalizer.atexit = False
            except Exception:
                _failed()
        return self

    def answered(
        self,
        message: Mapping[str, Any],
        info: CallInfo | None,
        *,
        source: str = "miss",
        model: str | None = None,
    ) -> None:
        """End the span with an answer (``model``: the model that gave it, if a fallback)."""
        if self._ended:
            return
        self._ended = True
        try:
            self._telemetry._answered(
                self._span,
                self.call,
                source,
                message,
                info,
                answered_by=model or self.call.model,
                seconds=self._seconds(),
            )
        except Exception:
            _failed()

    def failed(self, status: int | None) -> None:
        """End the span with an error status the call got instead of an answer."""
        self._error(str(status) if status is not None else _OTHER, None)

    def error(self, exc: BaseException | None) -> None:
        """End the span with the exception the call raised."""
        self._error(type(exc).__name__ if exc is not None else _OTHER, exc)

    def _seconds(self) -> float | None:
        return None if self._started is None else time.perf_counter() - self._started

    def _incomplete(self) -> None:
        self._error(INCOMPLETE_STREAM, None)

    def _error(self, error_type: str, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self._telemetry._failed(self._span, self.call, error_type, exc, self._seconds())
        except Exception:
            _failed()


# --------------------------------------------------------------------------- helpers


def _end(span: Any, attributes: Mapping[str, Any]) -> None:
    # A processor or exporter that raises on a span's end must not cost the call its metrics.
    try:
        span.set_attributes(attributes)
        span.end()
    except Exception:
        _failed()


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: list[float]) -> Any:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advice
        return meter.create_histogram(name, unit=unit, description=description)


@functools.lru_cache(maxsize=1024)
def _namespace_hash(namespace: str) -> str:
    return xxhash.xxh3_64_hexdigest(b"haikucache-telemetry\x00" + namespace.encode())


def _tokens(usage: Mapping[str, Any]) -> tuple[int, int, int, int]:
    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return (
        count("input_tokens"),
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
        count("output_tokens"),
    )


def _parts(content: Any) -> list[dict[str, Any]]:
    """Messages API content as the conventions' message parts."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, (list, tuple)) else ():
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": block.get("text", "")})
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": block.get("thinking", "")})
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(
                {
                    "type": "tool_call",
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "arguments": block.get("input"),
                }
            )
        elif kind == "tool_result":
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": block.get("tool_use_id"),
                    "response": block.get("content"),
                }
            )
        else:  # images, documents …: their kind only, never their bytes
            parts.append({"type": str(kind)})
    return parts


def _message_parts(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": message.get("role"), "parts": _parts(message.get("content"))}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _failed() -> None:
    logger.warning("haikucache: telemetry failed; the call goes on", exc_info=True)
