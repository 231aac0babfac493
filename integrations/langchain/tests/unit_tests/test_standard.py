"""langchain-tests' standard unit suite for ChatAnthropicHaikuCache (no network)."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests
from syrupy.assertion import SnapshotAssertion

from langchain_haikucache import ChatAnthropicHaikuCache

# The standard suite asks for method="json_mode", which ChatAnthropic itself answers with a
# UserWarning (and falls back to json_schema); warnings are errors in this project.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Unrecognized structured output method 'json_mode':UserWarning"
)


class TestChatAnthropicHaikuCacheUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatAnthropicHaikuCache]:
        return ChatAnthropicHaikuCache

    @property
    def chat_model_params(self) -> dict:
        return {"model": "claude-haiku-4-5"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"ANTHROPIC_API_KEY": "env-key", "ANTHROPIC_API_URL": "http://127.0.0.1:9"},
            {"model": "claude-haiku-4-5"},
            {"anthropic_api_key": "env-key", "anthropic_api_url": "http://127.0.0.1:9"},
        )

    @pytest.mark.xfail(
        reason=(
            "langchain-core's load(allowed_objects='all') revives only the classes on its "
            "built-in allowlist (langchain_core.load.mapping), which names no third-party "
            "partner class; the round trip with allowed_objects=[ChatAnthropicHaikuCache] "
            "is tested in test_chat_models.py"
        ),
        strict=True,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: SnapshotAssertion) -> None:
        super().test_serdes(model, snapshot)
