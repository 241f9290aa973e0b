"""`POST /v1/chat/completions`: request type and response normalisation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.protocol.common import (
    SamplingRequest,
    TokenCount,
    UsageMode,
    apply_usage_mode,
    clean_usage,
)


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(SamplingRequest, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


_MESSAGE_DROP_IF_NULL = ("annotations", "audio", "function_call", "tool_calls",
                         "reasoning_content", "reasoning")  # fmt: skip


def normalise_response(doc: dict[str, Any], model: str) -> dict[str, Any]:
    doc["model"] = model
    for key in ("prompt_logprobs", "prompt_token_ids", "kv_transfer_params",
                "system_fingerprint", "service_tier"):  # fmt: skip
        if doc.get(key) is None:
            doc.pop(key, None)
    for choice in doc.get("choices", ()):
        msg = choice.get("message")
        if isinstance(msg, dict):
            for key in _MESSAGE_DROP_IF_NULL:
                if not msg.get(key):
                    msg.pop(key, None)
            msg.setdefault("refusal", None)
            msg.setdefault("content", None)
        choice.setdefault("logprobs", None)
        if choice.get("stop_reason") is None:
            choice.pop("stop_reason", None)
        if choice.get("token_ids") is None:
            choice.pop("token_ids", None)
    if isinstance(doc.get("usage"), dict):
        doc["usage"] = clean_usage(doc["usage"])
    return doc


def normalise_chunk(doc: dict[str, Any], model: str, *, usage: UsageMode) -> dict[str, Any]:
    doc["model"] = model
    for key in ("prompt_token_ids", "kv_transfer_params", "system_fingerprint", "service_tier"):
        if doc.get(key) is None:
            doc.pop(key, None)
    for choice in doc.get("choices", ()):
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key in [k for k, v in delta.items() if v is None]:
                del delta[key]
            for key in ("tool_calls", "reasoning_content", "reasoning"):
                if key in delta and not delta[key]:
                    del delta[key]
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
        if choice.get("stop_reason") is None:
            choice.pop("stop_reason", None)
        if choice.get("token_ids") is None:
            choice.pop("token_ids", None)
    apply_usage_mode(doc, usage)
    return doc
