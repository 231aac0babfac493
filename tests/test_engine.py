"""The engine's stages without I/O: validate, key, account."""

from __future__ import annotations

import pytest

from haikucache import (
    CallOptions,
    ConfigurationError,
    Engine,
    MemoryLedger,
    RequestValidationError,
    request_key,
)
from haikucache._engine import namespace_for

REQUEST = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}


def test_prepare_validates_keys_and_drops_nones() -> None:
    engine = Engine(namespace="team", ledger=MemoryLedger())
    call = engine.prepare({**REQUEST, "system": None, "stream": True}, credential=None)
    assert call.body == {**REQUEST, "stream": True}
    assert call.stream is True
    assert call.key == request_key(REQUEST, namespace="team")
    with pytest.raises(RequestValidationError):
        engine.prepare({**REQUEST, "max_tokens": 0}, credential=None)


def test_haikucache_options_never_reach_the_body() -> None:
    engine = Engine(ledger=False)
    with pytest.raises(RequestValidationError, match="haikucache options"):
        engine.prepare({**REQUEST, "namespace": "x"}, credential=None)
    call = engine.prepare(
        REQUEST, CallOptions(namespace="tenant-7", no_store=True), credential=None
    )
    assert call.namespace == "tenant-7"
    assert call.key == request_key(REQUEST, namespace="tenant-7")


def test_namespaces_hash_the_credential_and_never_contain_it() -> None:
    secret = "sk-ant-api03-secret"
    ns = namespace_for(secret)
    assert secret not in ns and "secret" not in ns
    assert ns == namespace_for(secret) != namespace_for("sk-ant-other")
    engine = Engine.for_credentials(secret, ledger=False)
    assert engine.namespace == ns
    call = engine.prepare(REQUEST, credential=secret)
    assert secret not in call.key and secret not in call.scope
    # The key is scoped by the credential's hash: another key never finds it.
    assert call.key != engine.prepare(REQUEST, credential="sk-ant-other").key


def test_record_accounts_the_call() -> None:
    ledger = MemoryLedger()
    engine = Engine(namespace="n", ledger=ledger)
    call = engine.prepare(REQUEST, credential=None)
    info = engine.record(
        call,
        {"usage": {"input_tokens": 1000, "cache_read_input_tokens": 9000, "output_tokens": 100}},
    )
    assert info.cache == "miss" and info.key == call.key
    assert info.cost_usd == pytest.approx(1000e-6 + 9000e-7 + 100 * 5e-6)
    assert info.baseline_usd == pytest.approx(10_000e-6 + 100 * 5e-6)
    assert info.saved_usd == pytest.approx(9000 * 0.9e-6)
    assert info.to_dict()["savings"]["prompt_cache_read"] == pytest.approx(9000 * 0.9e-6)
    assert len(ledger.entries) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"namespace": ""}, {"ttl": 0}, {"ttl": True}, {"tags": "abc"}],
)
def test_bad_options_are_usage_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        CallOptions(**kwargs)  # type: ignore[arg-type]


def test_call_options_from_door_keywords() -> None:
    from haikucache import CallOptions, ConfigurationError

    assert CallOptions.of() is CallOptions.of(tags=[])  # the shared default: nothing set
    options = CallOptions.of("tenant", no_store=True, ttl=60, tags=["a", "b"])
    assert options == CallOptions("tenant", False, True, 60, ("a", "b"))
    with pytest.raises(ConfigurationError, match="one string"):
        CallOptions.of(tags="ab")
