"""`POST /v1/completions` (legacy text completions): request type and normalisation."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from gateway.errors import BadRequest
from gateway.protocol.common import SamplingRequest, UsageMode, apply_usage_mode, clean_usage


class CompletionRequest(SamplingRequest, kw_only=True):
    prompt: str | list[Any]
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list):
            _check_prompt_list(self.prompt)

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens


def _check_prompt_list(items: list[Any]) -> None:
    # OpenAI accepts a string, a list of strings, a list of token ids, or a list of lists of
    # token ids; anything else is a type error on `prompt`.
    if not items:
        raise BadRequest("'prompt' must not be empty.", param="prompt")
    kinds = {type(x) for x in items}
    if kinds == {str}:
        return
    if kinds == {int} and all(x >= 0 for x in items):
        return
    if kinds == {list} and all(
        x and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x)
        for x in items
    ):
        return
    raise BadRequest(
        "Invalid type for 'prompt': expected a string, an array of strings, an array of "
        "token ids, or an array of arrays of token ids.",
        param="prompt",
    )


def normalise_response(doc: dict[str, Any], model: str) -> dict[str, Any]:
    doc["model"] = model
    for key in ("prompt_logprobs", "kv_transfer_params", "system_fingerprint", "service_tier"):
        if doc.get(key) is None:
            doc.pop(key, None)
    for choice in doc.get("choices", ()):
        choice.setdefault("logprobs", None)
        for key in ("stop_reason", "prompt_logprobs", "prompt_token_ids", "token_ids"):
            if choice.get(key) is None:
                choice.pop(key, None)
    if isinstance(doc.get("usage"), dict):
        doc["usage"] = clean_usage(doc["usage"])
    return doc


def normalise_chunk(doc: dict[str, Any], model: str, *, usage: UsageMode) -> dict[str, Any]:
    doc = normalise_response(doc, model)
    for choice in doc.get("choices", ()):
        choice.setdefault("finish_reason", None)
    apply_usage_mode(doc, usage)
    return doc
