"""Decoding request bodies into typed structs, with OpenAI-style errors naming the field."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from gateway.errors import BadRequest

T = TypeVar("T")

_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def decode_request(body: bytes, type_: type[T]) -> T:
    """Decode JSON into `type_`; unknown fields are ignored, wrong types are a 400."""
    if not body:
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _AT.search(text)
        param = None
        if m:
            param = _param_name(m.group("path"))
            text = text[: m.start()]
        missing = _MISSING.search(text)
        if missing:
            field = missing.group("field")
            param = f"{param}.{field}" if param else field
            raise BadRequest(f"Missing required parameter: '{param}'.", param=param) from None
        if param:
            raise BadRequest(f"Invalid value for '{param}': {text}", param=param) from None
        raise BadRequest(f"Invalid request body: {text}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise BadRequest(
            f"We could not parse the JSON body of your request ({e}). "
            "The body must be valid UTF-8 JSON.",
            code="invalid_json",
        ) from None


def _param_name(path: str) -> str:
    # msgspec paths look like `messages[0].content`; OpenAI names params the same way.
    return path.lstrip(".")


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
TokenCount = Annotated[int, Meta(ge=1)]
Choices = Annotated[int, Meta(ge=1, le=16)]


class SamplingRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What chat and text completions share. Fields OpenAI defines that the engine can honour;
    unknown fields are accepted and dropped (OpenAI clients send fields that only OpenAI's
    servers use)."""

    model: str
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Choices | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


UsageMode = Literal["keep", "null", "omit"]
"""How a stream chunk carries `usage`: OpenAI sends `null` on every chunk but the last when the
client asked for usage, and no `usage` key at all when it did not."""


def clean_usage(usage: dict[str, Any]) -> dict[str, Any]:
    # vLLM sends null token details; OpenAI's schema wants an object or nothing.
    return {k: v for k, v in usage.items() if v is not None}


def apply_usage_mode(doc: dict[str, Any], mode: UsageMode) -> None:
    if mode == "omit":
        doc.pop("usage", None)
    elif mode == "null":
        doc["usage"] = None
    else:
        usage = doc.get("usage")
        doc["usage"] = clean_usage(usage) if isinstance(usage, dict) else None
