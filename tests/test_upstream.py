"""The HTTP layer: pure policy functions here; sending is tested against the emulator below."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Iterator

import httpx
import pytest

import haikucache
from haikucache import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ConfigurationError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from haikucache._sse import ServerSentEvent
from haikucache._upstream import (
    DEFAULT_BASE_URL,
    AsyncUpstream,
    SyncUpstream,
    as_timeout,
    betas_from_headers,
    build_headers,
    decode_event,
    decode_json_object,
    error_from_event,
    error_from_response,
    is_retryable,
    join_url,
    merge_headers,
    parse_retry_after,
    resolve_base_url,
    retry_delay,
    should_retry_status,
    translate_transport_errors,
)
from haikucache.testing import Emulator, ManualClock

# --------------------------------------------------------------------------- retry policy


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, True),
        (413, False),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (529, True),
    ],
)
def test_status_retry_rule(status: int, retry: bool) -> None:
    assert should_retry_status(status) is retry
    assert should_retry_status(status, {}) is retry


def test_x_should_retry_header_overrides_the_status_rule() -> None:
    assert should_retry_status(400, {"x-should-retry": "true"}) is True
    assert should_retry_status(529, {"x-should-retry": "false"}) is False
    assert should_retry_status(529, {"x-should-retry": "maybe"}) is True


def test_which_errors_are_retryable() -> None:
    assert is_retryable(APIConnectionError())
    assert is_retryable(APITimeoutError())
    assert is_retryable(OverloadedError("x", status_code=529))
    assert not is_retryable(BadRequestError("x", status_code=400))
    assert not is_retryable(
        RateLimitError("x", status_code=429, headers={"x-should-retry": "false"})
    )
    assert not is_retryable(APIResponseValidationError("garbage"))


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_seconds_and_floats() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25


def test_retry_after_http_date() -> None:
    now = 1_763_632_800.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "headers", [None, {}, {"retry-after": "soon"}, {"retry-after-ms": "x"}, {"other": "1"}]
)
def test_missing_or_unparseable_retry_after(headers: dict[str, str] | None) -> None:
    assert parse_retry_after(headers) is None


def test_retry_delay_uses_the_server_hint_when_between_0_and_60_seconds() -> None:
    assert retry_delay(0, {"retry-after": "2"}) == 2.0
    assert retry_delay(1, {"retry-after-ms": "60000"}) == 60.0


@pytest.mark.parametrize("hint", ["0", "-1", "61", "3600"])
def test_retry_delay_ignores_hints_out_of_range(hint: str) -> None:
    assert retry_delay(0, {"retry-after": hint}, rand=lambda: 0.0) == 0.5


def test_backoff_doubles_is_capped_at_8s_and_jitters_down_by_up_to_25_percent() -> None:
    assert [retry_delay(n, rand=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert retry_delay(0, rand=lambda: 1.0) == 0.375
    assert retry_delay(10_000, rand=lambda: 1.0) == 6.0
    for n in range(5):
        assert 0.375 * 2**n <= retry_delay(n) * 1.0000001
        assert retry_delay(n) <= 0.5 * 2**n


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, "invalid_request_error", BadRequestError),
        (401, "authentication_error", AuthenticationError),
        (402, "billing_error", BillingError),
        (403, "permission_error", PermissionDeniedError),
        (404, "not_found_error", NotFoundError),
        (409, "conflict_error", ConflictError),
        (413, "request_too_large", RequestTooLargeError),
        (422, "invalid_request_error", UnprocessableEntityError),
        (429, "rate_limit_error", RateLimitError),
        (500, "api_error", InternalServerError),
        (502, "api_error", InternalServerError),
        (504, "timeout_error", GatewayTimeoutError),
        (529, "overloaded_error", OverloadedError),
        (418, "invalid_request_error", APIStatusError),
    ],
)
def test_error_response_maps_to_its_class(
    status: int, error_type: str, cls: type[APIStatusError]
) -> None:
    body = (
        b'{"type":"error","error":{"type":"%s","message":"Something broke"},"request_id":"req_body"}'
        % error_type.encode()
    )
    error = error_from_response(status, body, httpx.Headers({"Request-Id": "req_header"}))
    assert type(error) is cls
    assert error.status_code == status
    assert error.error_type == error_type
    assert error.message == "Something broke"
    assert error.request_id == "req_header"  # the header wins
    assert error.body["error"]["type"] == error_type
    assert error.headers == {"request-id": "req_header"}
    assert str(error) == f"Error code: {status} ({error_type}) - Something broke"


def test_request_id_falls_back_to_the_body() -> None:
    body = b'{"type":"error","error":{"type":"api_error","message":"x"},"request_id":"req_b"}'
    assert error_from_response(500, body, {}).request_id == "req_b"


def test_non_json_and_empty_error_bodies() -> None:
    html = error_from_response(502, b"<html>Bad Gateway</html>", {})
    assert type(html) is InternalServerError
    assert html.error_type is None
    assert html.message == "<html>Bad Gateway</html>"
    assert html.body == "<html>Bad Gateway</html>"
    empty = error_from_response(401, b"", {})
    assert type(empty) is AuthenticationError
    assert empty.body is None
    assert "empty body" in empty.message


def test_error_event_maps_by_its_type() -> None:
    data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = error_from_event(data, {"request-id": "req_1"})
    assert type(error) is OverloadedError
    assert error.status_code == 529
    assert error.request_id == "req_1"
    assert error.message == "Overloaded"
    unknown = error_from_event({"type": "error", "error": {"type": "mystery_error"}}, {})
    assert type(unknown) is InternalServerError
    assert unknown.status_code == 500
    rate = error_from_event({"type": "error", "error": {"type": "rate_limit_error"}}, {})
    assert type(rate) is RateLimitError


def test_decode_event() -> None:
    assert decode_event(ServerSentEvent("ping", ""), {}) is None
    assert decode_event(ServerSentEvent("message_stop", '{"type":"message_stop"}'), {}) == {
        "type": "message_stop"
    }
    # A data object without "type" gets the event name.
    assert decode_event(ServerSentEvent("custom", "{}"), {}) == {"type": "custom"}
    with pytest.raises(OverloadedError):
        decode_event(
            ServerSentEvent("error", '{"type":"error","error":{"type":"overloaded_error"}}'), {}
        )
    with pytest.raises(APIResponseValidationError):
        decode_event(ServerSentEvent("message_start", "[1]"), {})


def test_decode_json_object() -> None:
    assert decode_json_object(b'{"a": 1}') == {"a": 1}
    with pytest.raises(APIResponseValidationError, match="not JSON"):
        decode_json_object(b"<html>")
    with pytest.raises(APIResponseValidationError, match="JSON object"):
        decode_json_object(b"[]")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ReadTimeout("slow"), APITimeoutError),
        (httpx.ConnectTimeout("slow"), APITimeoutError),
        (httpx.PoolTimeout("slow"), APITimeoutError),
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.RemoteProtocolError("peer closed connection"), APIConnectionError),
        (httpx.ReadError("reset"), APIConnectionError),
    ],
)
def test_httpx_errors_are_translated_with_their_cause(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as info, translate_transport_errors():
        raise raised
    assert type(info.value) is expected
    assert info.value.__cause__ is raised


def test_other_exceptions_pass_through_translation() -> None:
    with pytest.raises(KeyError), translate_transport_errors():
        raise KeyError("mine")


# --------------------------------------------------------------------------- configuration


def test_headers_with_an_api_key() -> None:
    headers = build_headers(api_key="sk-1", auth_token=None, user_agent="haikucache/9")
    assert headers == {
        "accept": "application/json",
        "anthropic-version": "2023-06-01",
        "user-agent": "haikucache/9",
        "x-api-key": "sk-1",
    }


def test_headers_with_a_bearer_token_and_defaults() -> None:
    headers = build_headers(
        api_key=None,
        auth_token="tok",
        api_version="2026-10-21",
        user_agent="ua",
        default_headers={"Anthropic-Beta": "a,b", "X-Custom": "1", "Accept": None},
    )
    assert headers["authorization"] == "Bearer tok"
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["anthropic-beta"] == "a,b"
    assert headers["x-custom"] == "1"
    assert "accept" not in headers  # None removes a header


def test_merge_headers_and_betas() -> None:
    merged = merge_headers({"a": "1", "b": "2"}, {"B": "3", "a": None})
    assert merged == {"b": "3"}
    assert betas_from_headers({"anthropic-beta": " x , y,,"}) == ("x", "y")
    assert betas_from_headers({}) == ()


def test_base_url_argument_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url(None) == DEFAULT_BASE_URL
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://gateway.local/anthropic/")
    assert resolve_base_url(None) == "http://gateway.local/anthropic"
    assert resolve_base_url("https://other.example") == "https://other.example"
    assert resolve_base_url(httpx.URL("https://u.example/")) == "https://u.example"
    with pytest.raises(ConfigurationError, match="http"):
        resolve_base_url("ftp://nope")


def test_join_url_keeps_prefixes_and_absolute_urls() -> None:
    assert join_url("https://gw/anthropic", "/v1/messages") == "https://gw/anthropic/v1/messages"
    assert join_url("https://api", "v1/messages") == "https://api/v1/messages"
    absolute = "http://127.0.0.1:9/v1/messages/batches/b/results"
    assert join_url("https://api", absolute) == absolute


def test_timeouts() -> None:
    assert as_timeout(None) == httpx.Timeout(600.0, connect=5.0)
    assert as_timeout(3) == httpx.Timeout(3.0)
    custom = httpx.Timeout(1.0, read=2.0)
    assert as_timeout(custom) is custom
    for bad in (0, -1, True, "3"):
        with pytest.raises(ConfigurationError):
            as_timeout(bad)  # type: ignore[arg-type]


def test_user_agent_names_haikucache_and_its_version() -> None:
    upstream = SyncUpstream(api_key="k")
    try:
        assert upstream.headers["user-agent"] == f"haikucache/{haikucache.__version__}"
    finally:
        upstream.close()


def test_upstream_rejects_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="max_retries"):
        SyncUpstream(api_key="k", max_retries=-1)
    with httpx.Client() as sync_http, pytest.raises(ConfigurationError, match="not both"):
        SyncUpstream(api_key="k", http_client=sync_http, transport=httpx.HTTPTransport())
    with httpx.Client() as sync_http, pytest.raises(ConfigurationError, match="AsyncClient"):
        AsyncUpstream(api_key="k", http_client=sync_http)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- against the emulator

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hi"}],
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emu(clock: ManualClock) -> Emulator:
    return Emulator(clock=clock)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def upstream(emu: Emulator, sleeps: list[float]) -> Iterator[SyncUpstream]:
    upstream = SyncUpstream(api_key="k", transport=emu.transport(), sleep=sleeps.append)
    yield upstream
    upstream.close()


def test_request_json_returns_the_object_and_headers(upstream: SyncUpstream, emu: Emulator) -> None:
    data, headers = upstream.request_json(
        "GET", "/v1/messages/batches", params={"limit": 5, "after_id": None}
    )
    assert data["data"] == []
    assert headers["request-id"] == emu.log[-1].request_id
    assert emu.log[-1].path == "/v1/messages/batches"


def test_stream_sse_yields_raw_events_including_pings_and_closes_at_the_end(
    upstream: SyncUpstream,
) -> None:
    events = upstream.stream_sse("POST", "/v1/messages", json={**BODY, "stream": True})
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-1] == "message_stop"
    assert events.response.is_closed


def test_stream_sse_error_event_raises_and_closes(upstream: SyncUpstream, emu: Emulator) -> None:
    emu.inject("stream_error", after_events=2)
    events = upstream.stream_sse("POST", "/v1/messages", json={**BODY, "stream": True})
    assert next(events)["type"] == "message_start"
    assert next(events)["type"] == "ping"
    with pytest.raises(OverloadedError):
        next(events)
    assert events.response.is_closed


def test_server_errors_back_off_with_the_injected_sleep(
    upstream: SyncUpstream, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("server_error", times=2)
    data, _ = upstream.request_json("POST", "/v1/messages", json=BODY)
    assert data["type"] == "message"
    assert len(sleeps) == 2
    assert 0.375 <= sleeps[0] <= 0.5
    assert 0.75 <= sleeps[1] <= 1.0
    assert emu.requests["messages"] == 3


def test_stream_lines_reads_jsonl(
    upstream: SyncUpstream, emu: Emulator, clock: ManualClock
) -> None:
    batch, _ = upstream.request_json(
        "POST",
        "/v1/messages/batches",
        json={"requests": [{"custom_id": f"r{i}", "params": BODY} for i in range(3)]},
    )
    clock.advance(emu.batch_processing_seconds)
    ended, _ = upstream.request_json("GET", f"/v1/messages/batches/{batch['id']}")
    with upstream.stream_lines("GET", ended["results_url"]) as lines:
        ids = sorted(json.loads(line)["custom_id"] for line in lines)
    assert ids == ["r0", "r1", "r2"]


async def test_async_upstream_twin(emu: Emulator) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    upstream = AsyncUpstream(api_key="k", transport=emu.transport(), sleep=sleep)
    try:
        emu.inject("rate_limit", times=1, retry_after=3)
        data, _ = await upstream.request_json("POST", "/v1/messages", json=BODY)
        assert data["type"] == "message"
        assert sleeps == [3.0]
        events = await upstream.stream_sse("POST", "/v1/messages", json={**BODY, "stream": True})
        kinds = [event["type"] async for event in events]
        assert kinds[-1] == "message_stop"
        emu.inject("drop", times=None)
        with pytest.raises(APIConnectionError):
            await upstream.request_json("POST", "/v1/messages", json=BODY)
    finally:
        await upstream.aclose()
