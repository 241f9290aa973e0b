"""Decoding request bodies into typed structs, with OpenAI-style errors naming the field.

Every public route decodes its body through `decode_request`, which is where hostile shapes
become a 400 before anything else sees them: JSON nested deeper than `MAX_JSON_DEPTH` (deep
nesting would otherwise surface later as a `RecursionError` in code that walks the request,
e.g. the prompt digest, after output may already have been sent), and model names that are
not short printable identifiers (they are stored on usage records and indexed).
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from gateway.errors import BadRequest

T = TypeVar("T")

_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request may carry. OpenAI's own request shapes
need under ten levels; a JSON schema in `response_format` or `tools` rarely a few dozen."""

MAX_MODEL_NAME = 256
MAX_STOP_SEQUENCES = 16
"""OpenAI takes up to 4; engines more. A longer list is a client bug (or an attack)."""
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+=-]+")


def decode_request(body: bytes, type_: type[T]) -> T:
    """Decode JSON into `type_`; unknown fields are ignored, wrong types, nesting deeper than
    `MAX_JSON_DEPTH` and invalid model names are a 400."""
    if not body:
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        decoded = msgspec.json.decode(body, type=type_)
    except RecursionError:  # msgspec's own limit, far above ours
        raise _too_deep() from None
    except msgspec.ValidationError as e:
        _raise_validation_error(e)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise BadRequest(
            f"We could not parse the JSON body of your request ({e}). "
            "The body must be valid UTF-8 JSON.",
            code="invalid_json",
        ) from None
    # Counting brackets is C-speed and bounds the depth: most bodies need no walk at all.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and depth_exceeds(
        decoded, MAX_JSON_DEPTH
    ):
        raise _too_deep()
    if isinstance(decoded, SamplingRequest):
        check_model_name(decoded.model)
    return decoded


def check_model_name(name: str, param: str = "model") -> None:
    """A model name (a base model or an adapter) is stored on usage records, prices and
    lineage, and indexed: 1-256 characters of letters, digits and `. _ : / @ + = -` (every
    OpenAI, Hugging Face and LoRA name fits)."""
    if len(name) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"Invalid value for '{param}': model names are 1 to {MAX_MODEL_NAME} characters of "
            "letters, digits and . _ : / @ + = -",
            param=param,
            code="invalid_model",
        )


def _too_deep() -> BadRequest:
    return BadRequest(
        f"The request body is nested too deeply (more than {MAX_JSON_DEPTH} levels of "
        "arrays and objects).",
        code="nesting_too_deep",
    )


def depth_exceeds(value: object, limit: int) -> bool:
    """Whether `value` (a decoded struct, or plain JSON values) nests arrays, objects and
    structs more than `limit` deep. Iterative: the point is to never recurse on hostile
    input. Strings and numbers cost nothing; only fields that can hold containers are read."""
    stack: list[tuple[object, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        if depth >= limit:
            return True
        if isinstance(v, msgspec.Struct):
            for name in _nestable_fields(type(v)):
                x = getattr(v, name)
                if isinstance(x, list | dict | msgspec.Struct):
                    push((x, depth + 1))
        else:
            items = v.values() if isinstance(v, dict) else v
            for x in items:  # type: ignore[attr-defined]
                if isinstance(x, list | dict | msgspec.Struct):
                    push((x, depth + 1))
    return False


_SCALAR_TYPES = (
    mi.StrType, mi.IntType, mi.FloatType, mi.BoolType, mi.NoneType, mi.LiteralType,
    mi.EnumType, mi.DateTimeType, mi.DateType, mi.BytesType,
)  # fmt: skip


@functools.cache
def _nestable_fields(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of a struct type whose values can be containers (worth walking)."""

    def scalar(t: mi.Type) -> bool:
        if isinstance(t, mi.UnionType):
            return all(scalar(u) for u in t.types)
        if isinstance(t, mi.Metadata):
            return scalar(t.type)
        return isinstance(t, _SCALAR_TYPES)

    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return tuple(f.name for f in info.fields if not scalar(f.type))


def _raise_validation_error(e: msgspec.ValidationError) -> NoReturn:
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
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
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
