"""``HaikuCache``: Claude Haiku 4.5 as a LlamaIndex LLM, through haikucache's engine.

Every call goes through :class:`haikucache.Client` (or :class:`haikucache.AsyncClient`): the
request is validated locally, gets prompt-cache breakpoints from the planner, is answered from
the response cache when the engine has a store, and is accounted in the ledger. What
haikucache did for a call travels with the response: ``response.raw`` is the API's message
(with ``usage``) and ``response.additional_kwargs["haikucache"]`` holds the cache status,
dollars billed and saved (a :class:`haikucache.CallInfo` as a dict).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.types import BaseOutputParser, PydanticProgramMode

from haikucache import (
    DEFAULT_MODEL,
    DEFAULT_STORE,
    AsyncClient,
    AsyncMessageStream,
    CallOptions,
    Client,
    ConfigurationError,
    Engine,
    Ledger,
    Message,
    MessageStream,
    ResponseStore,
    lookup_model,
)
from haikucache.types import ContentBlockDeltaEvent, TextDelta, ThinkingDelta

from ._convert import from_api_message, to_api_messages, to_api_tool, tool_choice_param

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["HaikuCache"]

# Characters per token, on the low side for English (~4): a prompt this many characters per
# required token surely clears the model's minimum cacheable prefix.
_CHARS_PER_TOKEN_FLOOR = 3

dispatcher = get_dispatcher(__name__)

# haikucache's per-call options: keywords of a call that are not Messages API fields.
_OPTION_KWARGS = ("namespace", "no_cache", "no_store", "ttl", "tags")

# Keywords LlamaIndex hands to an LLM that mean nothing to the Messages API.
_FRAMEWORK_KWARGS = frozenset(
    {"formatted", "verbose", "tool_required", "allow_parallel_tool_calls", "error_on_no_tool_call"}
)


def _check_options(
    model: Any, max_tokens: Any, temperature: Any, timeout: Any, max_retries: Any
) -> None:
    """Fail on bad constructor options with haikucache's error, before anything is sent."""
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigurationError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0.0 <= temperature <= 1.0
    ):
        raise ConfigurationError(f"temperature must be between 0 and 1, got {temperature!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigurationError(f"max_retries must be a non-negative integer, got {max_retries!r}")


def _usage_kwargs(message: Message) -> dict[str, Any]:
    """``additional_kwargs`` of a response: usage, token totals and haikucache's CallInfo.

    ``prompt_tokens`` counts every input token, cached or not (the API's ``input_tokens``
    leaves out cache reads and writes).
    """
    data = message.to_dict()
    usage = dict(data.get("usage") or {})
    fresh = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    output = int(usage.get("output_tokens") or 0)
    extra: dict[str, Any] = {
        "usage": usage,
        "prompt_tokens": fresh + read + written,
        "completion_tokens": output,
        "total_tokens": fresh + read + written + output,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "stop_reason": data.get("stop_reason"),
    }
    if message.haikucache is not None:
        extra["haikucache"] = message.haikucache.to_dict()
    return extra


def _chat_response(message: Message, delta: str | None = None) -> ChatResponse:
    data = message.to_dict()
    return ChatResponse(
        message=from_api_message(data),
        raw=data,
        delta=delta,
        additional_kwargs=_usage_kwargs(message),
    )


def _completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(
        text=response.message.content or "",
        raw=response.raw,
        delta=response.delta,
        additional_kwargs=response.additional_kwargs,
    )


class _Chunks:
    """Turns stream events into LlamaIndex chunks (shared by the sync and async streams)."""

    def __init__(self) -> None:
        self.text = ""

    def on_event(self, event: Any) -> ChatResponse | None:
        if not isinstance(event, ContentBlockDeltaEvent):
            return None
        delta = event.delta
        if isinstance(delta, TextDelta):
            self.text += delta.text
            return ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=self.text),
                delta=delta.text,
                raw=event.to_dict(),
            )
        if isinstance(delta, ThinkingDelta):
            return ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=self.text),
                delta="",
                raw=event.to_dict(),
                additional_kwargs={"thinking_delta": delta.thinking},
            )
        return None


class HaikuCache(FunctionCallingLLM):
    """Claude Haiku 4.5 for LlamaIndex, with haikucache's caching, batching and ledger.

    Args:
        model: the model id (default ``claude-haiku-4-5``).
        max_tokens: the answer's token budget (at most the model's maximum, 64,000 on
            Haiku 4.5). It is also ``metadata.num_output``, the room LlamaIndex keeps free
            for the answer.
        temperature: sent only when given (API version ``2026-10-21`` rejects it).
        additional_kwargs: other Messages API fields sent with every request, e.g.
            ``{"stop_sequences": [...], "thinking": {...}}``.
        cache_system_prompt: end ``system_prompt`` in a prompt-cache breakpoint (default
            on) when it is long enough to be cached; see :meth:`_mark_system_prompt`.
        api_key: default ``$ANTHROPIC_API_KEY``.
        auth_token: a bearer token instead of an API key; default ``$ANTHROPIC_AUTH_TOKEN``.
        base_url: default ``$ANTHROPIC_BASE_URL``, else the Anthropic API.
        timeout: seconds per request.
        max_retries: retries after the first attempt (429, 5xx, connection errors).
        default_headers: extra headers on every request (e.g. ``anthropic-beta``).
        anthropic_version: the ``anthropic-version`` header (haikucache's default when not
            given).
        engine: the :class:`haikucache.Engine` (response store, ledger, planner policy). By
            default one whose namespace is a hash of the credential.
        store: shortcut for the engine's response cache: a store, ``"disk"`` (the
            default, the same at every haikucache door) or ``"memory"``; ``None`` caches
            nothing locally (prompt caching and accounting still work). Not together with
            ``engine``.
        transport: an httpx transport for both clients, e.g. ``Emulator().transport()``.
        async_transport: a separate transport for the async client.
        client: a ready :class:`haikucache.Client` (its engine is then used).
        async_client: a ready :class:`haikucache.AsyncClient`.
        batch_options: keyword arguments of the :class:`haikucache.Batcher` that
            :meth:`batch_chat` and :meth:`batch_complete` use (``journal``, ``max_wait``,
            ``poll_interval`` …).

    Per call, ``chat``/``complete`` and their twins accept Messages API fields
    (``stop_sequences``, ``thinking``, ``tools`` …) and haikucache's options
    (``namespace``, ``no_cache``, ``no_store``, ``ttl``, ``tags``) as keyword arguments.

    Raises:
        ConfigurationError: no credential, a bad option, or ``max_tokens`` above the model's
            maximum.

    Example:
        >>> from llama_index.core import Settings
        >>> Settings.llm = HaikuCache(store="disk")  # doctest: +SKIP
    """

    model: str = Field(default=DEFAULT_MODEL, description="The Claude model id.")
    max_tokens: int = Field(default=4096, gt=0, description="Token budget of an answer.")
    temperature: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Sampling temperature (sent only if set)."
    )
    timeout: float = Field(default=600.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(default=2, ge=0, description="Retries after the first attempt.")
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Other Messages API fields sent with every request."
    )
    cache_system_prompt: bool = Field(
        default=True,
        description=(
            "End the LLM's own system_prompt in a prompt-cache breakpoint when it is long "
            "enough to be cached (it is sent unchanged with every call)."
        ),
    )

    batch_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the haikucache Batcher used by batch_chat/batch_complete.",
        exclude=True,
    )

    _client: Client = PrivateAttr()
    _aclient: AsyncClient = PrivateAttr()

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 4096,
        temperature: float | None = None,
        additional_kwargs: Mapping[str, Any] | None = None,
        *,
        cache_system_prompt: bool = True,
        batch_options: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        auth_token: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        anthropic_version: str | None = None,
        engine: Engine | None = None,
        store: ResponseStore | str | None = DEFAULT_STORE,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        client: Client | None = None,
        async_client: AsyncClient | None = None,
        callback_manager: CallbackManager | None = None,
        system_prompt: str | None = None,
        output_parser: BaseOutputParser | None = None,
        pydantic_program_mode: PydanticProgramMode = PydanticProgramMode.DEFAULT,
        **kwargs: Any,
    ) -> None:
        _check_options(model, max_tokens, temperature, timeout, max_retries)
        info = lookup_model(model)
        if info is not None and max_tokens > info.max_output_tokens:
            raise ConfigurationError(
                f"max_tokens={max_tokens} is above {model}'s maximum of "
                f"{info.max_output_tokens} output tokens"
            )
        extra = dict(additional_kwargs or {})
        for reserved in ("model", "max_tokens", "messages", "system", "stream"):
            if reserved in extra:
                raise ConfigurationError(
                    f"additional_kwargs cannot set {reserved!r}; it is built for each call"
                )
        super().__init__(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            timeout=timeout,
            max_retries=max_retries,
            additional_kwargs=extra,
            cache_system_prompt=cache_system_prompt,
            batch_options=dict(batch_options or {}),
            callback_manager=callback_manager,
            system_prompt=system_prompt,
            output_parser=output_parser,
            pydantic_program_mode=pydantic_program_mode,
            **kwargs,
        )
        if engine is not None and store != DEFAULT_STORE:
            raise ConfigurationError("pass either engine= or store=, not both")
        if client is not None:
            engine = client.engine if engine is None else engine
            if engine is not client.engine:
                raise ConfigurationError("client= already has an engine; do not pass another")
        options: dict[str, Any] = {
            "api_key": api_key,
            "auth_token": auth_token,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": max_retries,
            "default_headers": dict(default_headers) if default_headers else None,
        }
        if anthropic_version is not None:
            options["anthropic_version"] = anthropic_version
        if engine is None:
            credential = (
                api_key
                or os.environ.get("ANTHROPIC_API_KEY")
                or auth_token
                or os.environ.get("ANTHROPIC_AUTH_TOKEN")
            )
            engine = Engine.for_credentials(credential, store=store)
        self._client = client or Client(**options, engine=engine, transport=transport)
        if async_client is None:
            if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
                async_transport = transport
            if client is not None:
                # The async twin of a given client: same credentials, endpoint and limits.
                options.update(
                    api_key=client.api_key,
                    auth_token=client.auth_token,
                    base_url=client.base_url,
                    timeout=client.timeout,
                    max_retries=client.max_retries,
                )
            async_client = AsyncClient(**options, engine=engine, transport=async_transport)
        self._aclient = async_client

    @classmethod
    def class_name(cls) -> str:
        return "HaikuCache_LLM"

    @property
    def metadata(self) -> LLMMetadata:
        """200K context on Haiku 4.5, ``num_output = max_tokens``, chat and function calling."""
        info = lookup_model(self.model)
        return LLMMetadata(
            context_window=info.context_window if info is not None else 200_000,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model,
        )

    @property
    def client(self) -> Client:
        """The haikucache client of the sync methods."""
        return self._client

    @property
    def async_client(self) -> AsyncClient:
        """The haikucache client of the async methods."""
        return self._aclient

    @property
    def engine(self) -> Engine:
        """The engine both clients share (store, ledger, planner)."""
        return self._client.engine

    @property
    def ledger(self) -> Ledger | None:
        """Where every call's dollars are recorded (``None`` when accounting is off)."""
        return self._client.engine.ledger

    # -- request building -----------------------------------------------------------------

    def _params(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        system, api_messages = to_api_messages(messages)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": api_messages,
        }
        if system:
            self._mark_system_prompt(system)
            params["system"] = system
        if self.temperature is not None:
            params["temperature"] = self.temperature
        params.update(self.additional_kwargs)
        params.update((k, v) for k, v in kwargs.items() if k not in _FRAMEWORK_KWARGS)
        return params

    def _mark_system_prompt(self, system: list[dict[str, Any]]) -> None:
        """A breakpoint after the LLM's own ``system_prompt`` (see ``cache_system_prompt``).

        LlamaIndex sends ``system_prompt`` as the first system message of every ``predict``
        call, and chat engines put retrieved context in a *later* system message that changes
        with each question. Without a marker of its own, the stable prompt would be rewritten
        together with the context every time instead of being read at 0.1×.
        """
        if not (self.cache_system_prompt and self.system_prompt):
            return
        first = system[0]
        if first.get("text") != self.system_prompt or "cache_control" in first:
            return
        info = lookup_model(self.model)
        # Shorter prefixes are silently not cached by the API: do not spend a marker slot.
        minimum = info.min_cacheable_tokens if info is not None else 1024
        if len(self.system_prompt) >= _CHARS_PER_TOKEN_FLOOR * minimum:
            first["cache_control"] = {"type": "ephemeral"}

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[ChatMessage]:
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    # -- sync -----------------------------------------------------------------------------

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        message = self._client.messages.create(**self._params(messages, kwargs))
        return _chat_response(message)

    def _stream(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        # Opened here, not on first iteration: bad input and HTTP errors raise at the call.
        stream = self._client.messages.create(stream=True, **self._params(messages, kwargs))
        assert isinstance(stream, MessageStream)

        def gen() -> ChatResponseGen:
            chunks = _Chunks()
            with stream:
                for event in stream:
                    chunk = chunks.on_event(event)
                    if chunk is not None:
                        yield chunk
                final = stream.get_final_message()
            # The last chunk is the whole answer: tool calls, usage and haikucache's CallInfo.
            yield _chat_response(final, delta="")

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Send a conversation; the answer's ``raw`` is the API message."""
        return self._chat(messages, **kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Send one prompt as a user turn."""
        return _completion(self._chat(self._prompt_messages(prompt, formatted), **kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a conversation's answer; a cached answer is replayed as a stream."""
        return self._stream(messages, **kwargs)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the answer to one prompt."""
        chats = self._stream(self._prompt_messages(prompt, formatted), **kwargs)

        def gen() -> CompletionResponseGen:
            for chunk in chats:
                yield _completion(chunk)

        return gen()

    # -- async ----------------------------------------------------------------------------

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        message = await self._aclient.messages.create(**self._params(messages, kwargs))
        return _chat_response(message)

    async def _astream(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        stream = await self._aclient.messages.create(stream=True, **self._params(messages, kwargs))
        assert isinstance(stream, AsyncMessageStream)

        async def gen() -> ChatResponseAsyncGen:
            chunks = _Chunks()
            async with stream:
                async for event in stream:
                    chunk = chunks.on_event(event)
                    if chunk is not None:
                        yield chunk
                final = await stream.get_final_message()
            yield _chat_response(final, delta="")

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`."""
        return await self._achat(messages, **kwargs)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`."""
        return _completion(await self._achat(self._prompt_messages(prompt, formatted), **kwargs))

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`."""
        return await self._astream(messages, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        chats = await self._astream(self._prompt_messages(prompt, formatted), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for chunk in chats:
                yield _completion(chunk)

        return gen()

    # -- tools ----------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a tool-calling turn (``tools`` and ``tool_choice``)."""
        api_tools = [to_api_tool(tool) for tool in tools]
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        prepared: dict[str, Any] = {"messages": messages, **kwargs}
        if api_tools:
            prepared["tools"] = api_tools
            prepared["tool_choice"] = tool_choice_param(
                tool_choice,
                tool_required=tool_required,
                allow_parallel_tool_calls=allow_parallel_tool_calls,
                tool_names=[t["name"] for t in api_tools],
            )
        return prepared

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls were allowed."""
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                first = calls[0]
                response.message.blocks = [
                    b
                    for b in response.message.blocks
                    if not isinstance(b, ToolCallBlock) or b is first
                ]
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The tool calls in an answer, as :class:`ToolSelection` s.

        Raises:
            ValueError: there is none and ``error_on_no_tool_call`` is true (LlamaIndex's
                contract for this method).
        """
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError("expected at least one tool call in the answer, got none")
        selections = []
        for call in calls:
            arguments = call.tool_kwargs
            if not isinstance(arguments, dict):
                arguments = {}
            selections.append(
                ToolSelection(
                    tool_id=call.tool_call_id or "",
                    tool_name=call.tool_name,
                    tool_kwargs=arguments,
                )
            )
        return selections

    # -- Message Batches ------------------------------------------------------------------

    def _batch_jobs(
        self, conversations: Sequence[Sequence[ChatMessage]], kwargs: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any] | BaseException], CallOptions | None]:
        """One Messages body per conversation (or the error that conversion raised)."""
        fields = {k: v for k, v in kwargs.items() if k not in _OPTION_KWARGS}
        chosen = {k: kwargs[k] for k in _OPTION_KWARGS if k in kwargs}
        if isinstance(chosen.get("tags"), str):
            raise ConfigurationError("tags must be a sequence of strings, not one string")
        if "tags" in chosen:
            chosen["tags"] = tuple(chosen["tags"] or ())
        options = CallOptions(**chosen) if chosen else None
        jobs: list[dict[str, Any] | BaseException] = []
        for conversation in conversations:
            try:
                jobs.append(self._params(conversation, fields))
            except ValueError as exc:  # RequestValidationError: that job fails, not the batch
                jobs.append(exc)
        return jobs, options

    def _batch_results(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        jobs: list[dict[str, Any] | BaseException],
        answers: Sequence[Any],
        return_exceptions: bool,
    ) -> list[ChatResponse | BaseException]:
        queued = iter(answers)
        out: list[ChatResponse | BaseException] = []
        for conversation, job in zip(conversations, jobs, strict=True):
            result = job if isinstance(job, BaseException) else next(queued)
            if isinstance(result, BaseException):
                out.append(result)
                continue
            response = _chat_response(result)
            # Instrumentation sees each batched answer like any other chat answer.
            dispatcher.event(LLMChatEndEvent(messages=list(conversation), response=response))
            out.append(response)
        if not return_exceptions:
            for result in out:
                if isinstance(result, BaseException):
                    raise result
        return out

    def _announce(
        self, conversations: Sequence[Sequence[ChatMessage]], kwargs: Mapping[str, Any]
    ) -> None:
        payload = self.to_payload()
        for conversation in conversations:
            dispatcher.event(
                LLMChatStartEvent(
                    model_dict=payload,
                    messages=list(conversation),
                    additional_kwargs={**kwargs, "batch": True},
                )
            )

    @dispatcher.span
    def batch_chat(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[ChatResponse | BaseException]:
        """Answer many conversations through Message Batches, at half price.

        Each conversation becomes one job of a :class:`haikucache.Batcher` (identical jobs
        are sent once; answers already in the response cache are not sent at all). Blocks
        until every answer is in — batches usually end within minutes, at most 24 hours.
        Answers are stored in the response cache, so a later ``chat`` of the same
        conversation is free.

        Args:
            conversations: lists of chat messages, one per job.
            return_exceptions: put a failed job's exception in its place instead of raising
                the first one.
            **kwargs: Messages API fields and haikucache options for every job.

        Returns:
            One :class:`ChatResponse` per conversation, in order; ``additional_kwargs
            ["haikucache"]["batch"]`` is true for batched answers.
        """
        from haikucache._batcher import Batcher

        conversations = [list(c) for c in conversations]
        jobs, options = self._batch_jobs(conversations, kwargs)
        self._announce(conversations, kwargs)
        queued = [job for job in jobs if not isinstance(job, BaseException)]
        answers: list[Any] = []
        if queued:
            with Batcher(self._client, **self.batch_options) as batcher:
                answers = batcher.map(queued, options, return_exceptions=True)
        return self._batch_results(conversations, jobs, answers, return_exceptions)

    def batch_complete(
        self,
        prompts: Sequence[str],
        *,
        formatted: bool = False,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[CompletionResponse | BaseException]:
        """:meth:`batch_chat` for prompts: one user turn each, answers as completions."""
        if isinstance(prompts, str):
            raise ConfigurationError("prompts must be a sequence of strings, not one string")
        results = self.batch_chat(
            [self._prompt_messages(p, formatted) for p in prompts],
            return_exceptions=return_exceptions,
            **kwargs,
        )
        return [r if isinstance(r, BaseException) else _completion(r) for r in results]

    @dispatcher.span
    async def abatch_chat(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[ChatResponse | BaseException]:
        """Async :meth:`batch_chat` (the batcher's worker thread does the I/O)."""
        from haikucache._batcher import AsyncBatcher

        conversations = [list(c) for c in conversations]
        jobs, options = self._batch_jobs(conversations, kwargs)
        self._announce(conversations, kwargs)
        queued = [job for job in jobs if not isinstance(job, BaseException)]
        answers: list[Any] = []
        if queued:
            async with AsyncBatcher(self._client, **self.batch_options) as batcher:
                answers = await batcher.amap(queued, options, return_exceptions=True)
        return self._batch_results(conversations, jobs, answers, return_exceptions)

    async def abatch_complete(
        self,
        prompts: Sequence[str],
        *,
        formatted: bool = False,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[CompletionResponse | BaseException]:
        """Async :meth:`batch_complete`."""
        if isinstance(prompts, str):
            raise ConfigurationError("prompts must be a sequence of strings, not one string")
        results = await self.abatch_chat(
            [self._prompt_messages(p, formatted) for p in prompts],
            return_exceptions=return_exceptions,
            **kwargs,
        )
        return [r if isinstance(r, BaseException) else _completion(r) for r in results]
