"""Drives the official ``anthropic`` SDK against the emulator and prints what it parsed.

Run by tests/fidelity/test_sdk.py with whichever SDK the interpreter has (``anthropic<1`` on
httpx in a separate virtualenv, or the newest on httpx2), so it must import nothing from the
test suite. Input: a JSON file named by argv[1]; output: one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
import time

import anthropic


def usage_of(message: object) -> dict[str, object]:
    usage = message.usage  # type: ignore[attr-defined]
    creation = getattr(usage, "cache_creation", None)
    return {
        "input": usage.input_tokens,
        "write": usage.cache_creation_input_tokens,
        "read": usage.cache_read_input_tokens,
        "write_5m": getattr(creation, "ephemeral_5m_input_tokens", None),
        "write_1h": getattr(creation, "ephemeral_1h_input_tokens", None),
        "output": usage.output_tokens,
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("in_process"):
        # Point the SDK at the in-process emulator through its own HTTP library's transport.
        from haikucache.testing import Emulator

        emulator = Emulator(batch_processing_seconds=0)
        uses_httpx2 = anthropic.DefaultHttpxClient.__mro__[1].__module__.startswith("httpx2")
        transport = emulator.httpx2_transport() if uses_httpx2 else emulator.transport()
        client = anthropic.Anthropic(
            api_key="test-key",
            base_url="http://emulator.test",
            http_client=anthropic.DefaultHttpxClient(transport=transport),
            max_retries=0,
        )
    else:
        client = anthropic.Anthropic(api_key="test-key", base_url=spec["base_url"], max_retries=0)
    out: dict[str, object] = {"sdk": anthropic.__version__}

    def ask(system_text: str) -> anthropic.types.Message:
        return client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            system=[{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "Summarise section 2."}],
        )

    long_calls = [ask(spec["long_system"]) for _ in range(2)]
    short_calls = [ask(spec["short_system"]) for _ in range(2)]
    out["long"] = [usage_of(m) for m in long_calls]
    out["short"] = [usage_of(m) for m in short_calls]
    out["text_type"] = long_calls[0].content[0].type
    out["stop_reason"] = long_calls[0].stop_reason

    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city", "unit"],
            },
        }
    ]
    tool_msg = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=128,
        tools=tools,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    block = tool_msg.content[-1]
    out["tool"] = {
        "stop_reason": tool_msg.stop_reason,
        "type": block.type,
        "name": block.name,
        "input": block.input,
    }

    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=200,
        system=[
            {"type": "text", "text": spec["long_system"], "cache_control": {"type": "ephemeral"}}
        ],
        messages=[{"role": "user", "content": "Summarise section 2."}],
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    out["stream"] = {
        "chunks": len(texts),
        "text": "".join(texts),
        "final_text": final.content[0].text,
        "usage": usage_of(final),
    }

    counted = client.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hello there"}]
    )
    out["count_tokens"] = counted.input_tokens

    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": f"job-{i}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"Job {i}"}],
                },
            }
            for i in range(3)
        ]
        + [
            {
                "custom_id": "bad",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 0,
                    "messages": [{"role": "user", "content": "x"}],
                },
            }
        ]
    )
    status = batch.processing_status
    for _ in range(200):
        batch = client.messages.batches.retrieve(batch.id)
        if batch.processing_status == "ended":
            break
        time.sleep(0.01)
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    out["batch"] = {
        "created_status": status,
        "status": batch.processing_status,
        "counts": batch.request_counts.to_dict()
        if hasattr(batch.request_counts, "to_dict")
        else dict(batch.request_counts),
        "results": results,
        "results_url": batch.results_url,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
