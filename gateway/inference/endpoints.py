"""The OpenAI endpoints the inference service serves, one `EndpointSpec` each: the only place
that knows chat completions from completions.

A spec says where the engine serves the endpoint, what a request of it looks like, how the
engine's answers are normalised to OpenAI's shape, and how its output text and prompt are
read (for the usage record's digest, attribution and the response observers). The rest of
the service handles any endpoint the same way, through its spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.protocol import chat, completions
from metering.usage.record import Endpoint
from serving.registry import Target

Request = chat.ChatCompletionRequest | completions.CompletionRequest

Choice = dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    name: Endpoint
    """As usage records name it."""
    path: str
    """On the gateway and on the engine alike."""
    request_type: type[chat.ChatCompletionRequest] | type[completions.CompletionRequest]
    chunk_object: str
    """The `object` of a stream chunk (for the chunk the gateway adds itself)."""
    normalise_response: Callable[[dict[str, Any], str], dict[str, Any]]
    normalise_chunk: Callable[..., dict[str, Any]]
    """(chunk, model, *, usage: UsageMode) -> the chunk in OpenAI's shape."""
    choice_text: Callable[[Choice], str | None]
    """A response choice's output text."""
    delta_text: Callable[[Choice], str | None]
    """A stream chunk choice's piece of output text."""
    prompt: Callable[[Any], str | list[Any]]
    """What a request asks: the completions prompt, or the chat messages as dicts."""
    token_param: Callable[[Any], str]
    """The name of the field that set the request's token budget (for error messages)."""
    tools: Callable[[Any], list[Any] | None]
    """Tool schemas sent with the request (priced twice: see `admission`)."""


def _chat_prompt(req: chat.ChatCompletionRequest) -> list[Any]:
    # Unset message fields are dropped: observers see what the client sent.
    return [
        {k: v for k, v in msgspec.structs.asdict(m).items() if v is not None} for m in req.messages
    ]


def _chat_message(choice: Choice) -> str | None:
    msg = choice.get("message")
    return msg.get("content") if msg else choice.get("text")


def _chat_delta(choice: Choice) -> str | None:
    delta = choice.get("delta")
    return delta.get("content") if delta else choice.get("text")


def _text(choice: Choice) -> str | None:
    return choice.get("text")


def _chat_token_param(req: chat.ChatCompletionRequest) -> str:
    return "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"


CHAT = EndpointSpec(
    name="chat.completions",
    path="/v1/chat/completions",
    request_type=chat.ChatCompletionRequest,
    chunk_object="chat.completion.chunk",
    normalise_response=chat.normalise_response,
    normalise_chunk=chat.normalise_chunk,
    choice_text=_chat_message,
    delta_text=_chat_delta,
    prompt=_chat_prompt,
    token_param=_chat_token_param,
    tools=lambda req: req.tools,
)

COMPLETIONS = EndpointSpec(
    name="completions",
    path="/v1/completions",
    request_type=completions.CompletionRequest,
    chunk_object="text_completion",
    normalise_response=completions.normalise_response,
    normalise_chunk=completions.normalise_chunk,
    choice_text=_text,
    delta_text=_text,
    prompt=lambda req: req.prompt,
    token_param=lambda req: "max_tokens",
    tools=lambda req: None,
)

ENDPOINTS: dict[Endpoint, EndpointSpec] = {spec.name: spec for spec in (CHAT, COMPLETIONS)}


def spec_of(req: Request) -> EndpointSpec:
    return CHAT if isinstance(req, chat.ChatCompletionRequest) else COMPLETIONS


def request_prompt(req: Request) -> str | list[Any]:
    """The completions prompt, or the chat messages as dicts (role, content, ...)."""
    return spec_of(req).prompt(req)


def engine_body(req: Request, target: Target, *, stream: bool) -> bytes:
    """What the engine is sent: the request with the engine's name for the model."""
    body: dict[str, Any] = msgspec.to_builtins(req)
    body["model"] = target.engine_model
    if stream:
        # Only the final usage chunk: per-chunk usage (`continuous_usage_stats`) costs vLLM
        # 12-15 % of its throughput; a cancelled stream is counted after the fact instead.
        body["stream"] = True
        opts = {"include_usage": True}
        if req.stream_options and req.stream_options.continuous_usage_stats:
            opts["continuous_usage_stats"] = True
        body["stream_options"] = opts
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return msgspec.json.encode(body)
