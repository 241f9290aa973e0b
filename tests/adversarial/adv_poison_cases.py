"""Poison inputs for every public route: NUL (JSON-escaped `\\u0000`) and oversized strings in
string fields, deep nesting, invalid UTF-8, lone surrogates, huge arrays, wrong types.

Each case says what the route must answer:
- REJECT: a 4xx in OpenAI's error shape. Identifiers (model names, roles, account, datanet and
  adapter names, ids in paths and queries) cannot hold a NUL or be 9,000 characters of junk;
  bodies over the 1 MiB limit, nesting past any sane depth, bytes that are not UTF-8, lone
  surrogates, huge arrays and wrong types are bad requests whatever the field.
- SAFE: free text (message content, prompt, stop, user, descriptions, record text) may carry a
  NUL or 9,000 characters; the route may refuse it (4xx, error shape) or serve it, but never
  with a 5xx, and an inference it serves must be billed like any other.
- HTML: the dashboard's login form answers HTML; only "never a 5xx" applies.
- CONTROL: the unpoisoned base body of a group of cases, which must be served.

"1,000,000 chars" stays just under the 1 MiB body limit: the route itself must refuse it;
"100,000 messages" goes over the limit (413).
"""

from __future__ import annotations

import copy
import json
import random
import string
from dataclasses import dataclass
from typing import Any, Literal

Expect = Literal["reject", "safe", "html", "control"]
REJECT: Expect = "reject"
CONTROL: Expect = "control"
"""The unpoisoned base of a group of cases: must be served (else the group proves nothing)."""
SAFE: Expect = "safe"
HTML: Expect = "html"

NUL = "x\u0000y"
LONG = "".join(random.Random(13).choices(string.ascii_letters + string.digits, k=9_000))
HUGE = "a" * 1_000_000
SURROGATE = "\ud800"
BIG_INT = "99999999999999999999"
"""Digits only, but past a bigint: a path id that parses and then overflows in SQL."""
RAW = "@@RAW@@"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    who: str = "inference"
    """Which of the suite's keys sends it: inference, contributor, curator, admin, none."""
    expect: Expect = REJECT
    content_type: str = "application/json"
    inference: bool = False
    """An inference route: a 2xx answer is a served response that must be billed."""


def dump(doc: Any, raw: bytes | None = None) -> bytes:
    """JSON of `doc`, with the placeholder string `RAW` replaced by `raw` verbatim (deep
    nesting or bytes no JSON encoder would write)."""
    out = json.dumps(doc).encode()
    if raw is not None:
        out = out.replace(json.dumps(RAW).encode(), raw, 1)
    return out


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def with_value(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def string_variants(
    route: str, method: str, url: str, base: dict[str, Any], path: list[Any], *,
    who: str, nul: Expect, long: Expect, inference: bool, huge: bool = True,
) -> list[Case]:  # fmt: skip
    """NUL, 9,000 chars, 1,000,000 chars, invalid UTF-8 and a lone surrogate in one string
    field."""
    field = ".".join(str(p) for p in path)
    out = [
        Case(f"{route} {field}=NUL", method, url, dump(with_value(base, path, NUL)), who, nul,
             inference=inference),
        Case(f"{route} {field}=9000 chars", method, url, dump(with_value(base, path, LONG)),
             who, long, inference=inference),
        Case(f"{route} {field}=invalid UTF-8", method, url,
             dump(with_value(base, path, RAW), b'"\xff\xfe\xed\xa0\x80"'), who, REJECT,
             inference=inference),
        Case(f"{route} {field}=lone surrogate", method, url,
             dump(with_value(base, path, SURROGATE)), who, REJECT, inference=inference),
    ]  # fmt: skip
    if huge:
        out.append(
            Case(f"{route} {field}=1,000,000 chars", method, url,
                 dump(with_value(base, path, HUGE)), who, REJECT, inference=inference)
        )  # fmt: skip
    return out


def junk_bodies(route: str, method: str, url: str, who: str, inference: bool) -> list[Case]:
    """Bodies that are not a JSON object of the route's type at all."""
    bodies: list[tuple[str, bytes]] = [
        ("empty body", b""),
        ("not JSON", b"this is not json"),
        ("JSON null", b"null"),
        ("JSON array", b"[1, 2]"),
        ("10,000 nested arrays", deep(10_000)),
        ("invalid UTF-8", b"\xff\xfe{}"),
        ("truncated JSON", b'{"model": "rec'),
    ]
    return [Case(f"{route} {name}", method, url, body, who, REJECT, inference=inference)
            for name, body in bodies]  # fmt: skip


# --- the OpenAI routes --------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
CHAT_BASE: dict[str, Any] = {
    "model": "recipes",
    "max_tokens": 1,
    "messages": [{"role": "user", "content": "Hello"}],
}
CHAT_NAMED: dict[str, Any] = CHAT_BASE | {
    "messages": [{"role": "user", "content": "Find soup", "name": "cook"}],
    "stop": ["\n\n"],
    "user": "adversary",
}
CHAT_PARTS: dict[str, Any] = CHAT_BASE | {
    "messages": [{"role": "user", "content": [{"type": "text", "text": "And then?"}]}],
}
_TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a recipe up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]  # fmt: skip
CHAT_TOOLS: dict[str, Any] = CHAT_BASE | {"tools": _TOOLS, "tool_choice": "none"}
CHAT_TOOL_HISTORY: dict[str, Any] = CHAT_TOOLS | {
    "messages": [
        {"role": "user", "content": "Find soup"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"q\": \"soup\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Leek soup."},
    ],
}  # fmt: skip
COMPLETION_BASE: dict[str, Any] = {"model": "recipes", "prompt": "Recipe:", "max_tokens": 1}


def chat_cases() -> list[Case]:
    r, m, u = "chat", "POST", CHAT
    out: list[Case] = []
    # The original bug first: a NUL or a 9,000-char model name stopped all shipping.
    out += string_variants(r, m, u, CHAT_BASE, ["model"], who="inference", nul=REJECT,
                            long=REJECT, inference=True)  # fmt: skip
    out += string_variants(r, m, u, CHAT_BASE, ["messages", 0, "content"], who="inference",
                            nul=SAFE, long=SAFE, inference=True)  # fmt: skip
    out += string_variants(r, m, u, CHAT_BASE, ["messages", 0, "role"], who="inference",
                            nul=REJECT, long=REJECT, inference=True, huge=False)  # fmt: skip
    # Each free-text field on a base the engine serves as it is (its control case says so).
    free_text: list[tuple[str, dict[str, Any], list[Any]]] = [
        ("named", CHAT_NAMED, ["messages", 0, "name"]),
        ("named", CHAT_NAMED, ["stop", 0]),
        ("named", CHAT_NAMED, ["user"]),
        ("parts", CHAT_PARTS, ["messages", 0, "content", 0, "text"]),
        ("tools", CHAT_TOOLS, ["tools", 0, "function", "name"]),
        ("tools", CHAT_TOOLS, ["tools", 0, "function", "description"]),
        ("tool history", CHAT_TOOL_HISTORY, ["messages", 1, "tool_calls", 0, "function",
                                             "arguments"]),
        ("tool history", CHAT_TOOL_HISTORY, ["messages", 1, "tool_calls", 0, "id"]),
        ("tool history", CHAT_TOOL_HISTORY, ["messages", 2, "tool_call_id"]),
    ]  # fmt: skip
    for name, base in {"plain": CHAT_BASE, "named": CHAT_NAMED, "parts": CHAT_PARTS,
                       "tools": CHAT_TOOLS, "tool history": CHAT_TOOL_HISTORY}.items():  # fmt: skip
        out.append(Case(f"chat control ({name})", m, u, dump(base), expect=CONTROL,
                        inference=True))  # fmt: skip
    for _, base, path in free_text:
        out += string_variants(r, m, u, base, path, who="inference", nul=SAFE, long=SAFE,
                                inference=True, huge=False)  # fmt: skip
    out += string_variants(r, m, u, CHAT_BASE | {"stop": "x"}, ["stop"], who="inference",
                            nul=SAFE, long=SAFE, inference=True, huge=False)  # fmt: skip
    for path, value in ((["tool_choice"], NUL), (["response_format"], {"type": NUL})):
        out.append(Case(f"chat {path[0]} with NUL", m, u, dump(with_value(CHAT_TOOLS, path, value)),
                        expect=REJECT, inference=True))  # fmt: skip
    # Deep nesting inside fields decoded as free-form JSON.
    nested = {
        "messages.0.content part": (["messages", 0, "content"], [{"type": "text", "text": "hi",
                                                                   "x": RAW}]),
        "response_format": (["response_format"], {"type": "json_schema", "json_schema": RAW}),
        "tools.0.function.parameters": (["tools", 0, "function", "parameters"], RAW),
        "tool_choice": (["tool_choice"], {"type": "function", "function": RAW}),
    }  # fmt: skip
    for name, (path, value) in nested.items():
        doc = with_value(CHAT_TOOLS, path, value)
        out.append(Case(f"chat {name} nested 10,000 deep", m, u, dump(doc, deep(10_000)),
                        expect=REJECT, inference=True))  # fmt: skip
    for name, (path, value) in {
        "messages.1.tool_calls": (["messages", 1, "tool_calls"], [RAW]),
    }.items():
        doc = with_value(CHAT_TOOL_HISTORY, path, value)
        out.append(Case(f"chat {name} nested 10,000 deep", m, u, dump(doc, deep(10_000)),
                        expect=REJECT, inference=True))  # fmt: skip
    # ~900 levels: within reach of a recursive digest of the prompt (RecursionError).
    doc = with_value(CHAT_BASE, ["messages", 0, "content"], [{"type": "text", "text": "hi",
                                                              "x": RAW}])  # fmt: skip
    out.append(Case("chat content part nested 900 deep", m, u, dump(doc, deep(900)),
                    expect=SAFE, inference=True))  # fmt: skip
    # Huge arrays.
    out.append(Case("chat 100,000 messages (over 1 MiB)", m, u,
                    dump(CHAT_BASE | {"messages": [{"role": "user", "content": "a"}] * 100_000}),
                    expect=REJECT, inference=True))  # fmt: skip
    out.append(Case("chat 60,000 messages (under 1 MiB)", m, u,
                    dump(CHAT_BASE | {"messages": [{"role": "user"}] * 60_000}),
                    expect=REJECT, inference=True))  # fmt: skip
    out.append(Case("chat stop list of 100,000", m, u, dump(CHAT_BASE | {"stop": ["a"] * 100_000}),
                    expect=REJECT, inference=True))  # fmt: skip
    # Wrong types and out-of-range values.
    wrong: dict[str, dict[str, Any]] = {
        "model=123": {"model": 123},
        "messages=string": {"messages": "hello"},
        "messages=[]": {"messages": []},
        "messages=[1]": {"messages": [1]},
        "content=5": {"messages": [{"role": "user", "content": 5}]},
        "role=5": {"messages": [{"role": 5, "content": "x"}]},
        "max_tokens=string": {"max_tokens": "ten"},
        "max_tokens=-1": {"max_tokens": -1},
        "max_tokens=10**30": {"max_tokens": 10**30},
        "temperature=string": {"temperature": "hot"},
        "n=1,000,000": {"n": 1_000_000},
        "stream=string": {"stream": "yes"},
        "stop=object": {"stop": {"a": 1}},
        "logit_bias values=string": {"logit_bias": {"1": "x"}},
        "stream_options=list": {"stream": True, "stream_options": [1]},
    }
    for name, patch in wrong.items():
        out.append(Case(f"chat {name}", m, u, dump(CHAT_BASE | patch), expect=REJECT,
                        inference=True))  # fmt: skip
    out += junk_bodies(r, m, u, "inference", True)
    return out


def completion_cases() -> list[Case]:
    r, m, u = "completions", "POST", COMPLETIONS
    out: list[Case] = [Case("completions control", m, u, dump(COMPLETION_BASE), expect=CONTROL,
                            inference=True)]  # fmt: skip
    out += string_variants(r, m, u, COMPLETION_BASE, ["model"], who="inference", nul=REJECT,
                            long=REJECT, inference=True)  # fmt: skip
    out += string_variants(r, m, u, COMPLETION_BASE, ["prompt"], who="inference", nul=SAFE,
                            long=SAFE, inference=True)  # fmt: skip
    for field in ("suffix", "user"):
        out += string_variants(r, m, u, COMPLETION_BASE | {field: "x"}, [field],
                                who="inference", nul=SAFE, long=SAFE, inference=True,
                                huge=False)  # fmt: skip
    out += string_variants(r, m, u, COMPLETION_BASE | {"prompt": ["a", "b"]}, ["prompt", 1],
                            who="inference", nul=SAFE, long=SAFE, inference=True,
                            huge=False)  # fmt: skip
    out.append(Case("completions prompt nested 10,000 deep", m, u,
                    dump(COMPLETION_BASE | {"prompt": RAW}, deep(10_000)), expect=REJECT,
                    inference=True))  # fmt: skip
    out.append(Case("completions prompt of 100,000 token ids", m, u,
                    dump(COMPLETION_BASE | {"prompt": [1] * 100_000}), expect=REJECT,
                    inference=True))  # fmt: skip
    out.append(Case("completions stop list of 100,000", m, u,
                    dump(COMPLETION_BASE | {"stop": ["a"] * 100_000}), expect=REJECT,
                    inference=True))  # fmt: skip
    for name, patch in {"prompt=5": {"prompt": 5}, "prompt=[{}]": {"prompt": [{}]},
                        "echo=string": {"echo": "x"}, "logprobs=99": {"logprobs": 99},
                        "model=null": {"model": None}}.items():  # fmt: skip
        out.append(Case(f"completions {name}", m, u, dump(COMPLETION_BASE | patch),
                        expect=REJECT, inference=True))  # fmt: skip
    out += junk_bodies(r, m, u, "inference", True)
    return out


def get_paths(route: str, who: str, template: str, values: dict[str, str]) -> list[Case]:
    return [Case(f"{route} {name}", "GET", template.format(v), who=who)
            for name, v in values.items()]  # fmt: skip


PATH_POISON = {
    "NUL": "x%00y",
    "9000 chars": LONG,
    "invalid UTF-8": "%FF%FE",
    "UTF-8-encoded surrogate": "%ED%A0%80",
    "bigint overflow": BIG_INT,
}


def models_cases() -> list[Case]:
    return get_paths("GET /v1/models/{id}", "inference", "/v1/models/{}", PATH_POISON)
