"""Settings: every field is read from its one environment variable by one rule, the names the
project has always read still work, and README.md's configuration table lists them all."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from gateway.config import HttpSettings
from royalty.settings import Settings, env_vars

README = Path(__file__).parents[2] / "README.md"
READ_ELSEWHERE = {"ROYALTY_SPAN_INDEX_LOAD"}
"""Read by a package itself (a library default, not a setting of the application)."""

NAMES_BEFORE_THE_GROUPS = {
    "DATABASE_URL", "ROYALTY_HOME", "ROYALTY_HOST", "ROYALTY_PORT", "ROYALTY_ENGINE_PORT",
    "ROYALTY_ENGINE_URLS", "ROYALTY_BASE_MODEL", "ROYALTY_MODELS_DIR", "ROYALTY_ADAPTERS_DIR",
    "ROYALTY_DEMO", "ROYALTY_BUDGETS", "ROYALTY_POST_USAGE", "ROYALTY_USAGE_LOG_MIN_FREE_MB",
    "ROYALTY_USAGE_LOG_DIR", "ROYALTY_SHIP_INTERVAL_S", "ROYALTY_MAX_LORAS",
    "ROYALTY_BUDGET_HOLD_S", "ROYALTY_ADAPTER_SLOT_WAIT_S", "ROYALTY_ROUTING", "ROYALTY_SPILL_AT",
    "ROYALTY_SHARED_LIMITS", "ROYALTY_REDIS_URL", "ROYALTY_PROMPT_DIGEST_KEY",
    "ROYALTY_INFLUENCE", "ROYALTY_INFLUENCE_WORKER", "ROYALTY_INFLUENCE_RETENTION_S",
    "ROYALTY_DEMO_KEY", "ROYALTY_TRUSTED_PROXIES",
}  # fmt: skip


def _get(settings: Settings, dotted: str) -> object:
    value: object = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _kind(dotted: str) -> object:
    cls: object = Settings
    for part in dotted.split("."):
        cls = typing.get_type_hints(cls)[part]
    if isinstance(cls, type(int | None)):
        (cls,) = (k for k in typing.get_args(cls) if k is not type(None))
    return cls


def _other_value(kind: object, default: object) -> tuple[str, object]:
    """(text, value it reads as) for a value unlike the default."""
    if kind is bool:
        return ("0", False) if default else ("yes", True)
    if kind is int:
        return "7", 7
    if kind is float:
        return "2.5", 2.5
    if kind is Path:
        return "/some/where", Path("/some/where")
    if typing.get_origin(kind) is tuple:
        return " a:1, ,b:2 ", ("a:1", "b:2")
    return "other", "other"


def test_every_setting_is_read_from_its_own_variable() -> None:
    fields = list(env_vars())
    names = [name for _, name in fields]
    assert len(names) == len(set(names)), "a variable names two settings"
    assert NAMES_BEFORE_THE_GROUPS <= set(names), NAMES_BEFORE_THE_GROUPS - set(names)
    assert all(n.startswith("ROYALTY_") or n == "DATABASE_URL" for n in names)
    default = Settings()
    for dotted, name in fields:
        text, expected = _other_value(_kind(dotted), _get(default, dotted))
        assert expected != _get(default, dotted), dotted
        read = Settings.from_env({name: text})
        assert _get(read, dotted) == expected, (dotted, name)
        others = [d for d, _ in fields if d != dotted]
        assert all(_get(read, d) == _get(default, d) for d in others), name


def test_the_rule_reads_lists_flags_and_empty_values() -> None:
    s = Settings.from_env({"ROYALTY_ENGINE_URLS": "http://a:1, http://b:2", "ROYALTY_PORT": "9"})
    assert s.engines.urls == ("http://a:1", "http://b:2") and s.http.port == 9
    assert Settings.from_env({"ROYALTY_PORT": "", "DATABASE_URL": ""}) == Settings()
    assert Settings.from_env({"ROYALTY_BUDGETS": ""}).budgets.enabled is False
    assert Settings.from_env({"ROYALTY_DEMO": "On"}).demo.datanets is True
    with pytest.raises(ValueError, match="ROYALTY_SHARED_LIMITS: not a boolean"):
        Settings.from_env({"ROYALTY_SHARED_LIMITS": "maybe"})
    with pytest.raises(ValueError, match="ROYALTY_MAX_BODY_BYTES"):
        Settings.from_env({"ROYALTY_MAX_BODY_BYTES": "a lot"})


def test_the_command_line_overrides_what_it_names() -> None:
    s = Settings.from_env({"ROYALTY_HOST": "0.0.0.0", "ROYALTY_PORT": "9"})
    cli = s.with_(data_dir=None, http={"host": None, "port": 10}, models={"dir": Path("/m")})
    assert cli.http == HttpSettings(host="0.0.0.0", port=10)
    assert cli.models.dir == Path("/m") and cli.data_dir == s.data_dir
    assert s.with_() == s


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({"ROYALTY_PROMPT_DIGEST_KEY": "hunter2"})
    assert s.usage.prompt_digest_key == "hunter2" and "hunter2" not in repr(s)


def test_the_readme_lists_every_variable() -> None:
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    listed = set(re.findall(r"`((?:ROYALTY_|DATABASE_URL)[A-Z_]*)`", section))
    names = {name for _, name in env_vars()}
    assert names <= listed, {"not in README.md": sorted(names - listed)}
    unknown = listed - names - READ_ELSEWHERE
    assert not unknown, {"in README.md, read by nothing": sorted(unknown)}
