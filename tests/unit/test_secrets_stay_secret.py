"""Keys and passwords stay out of logs and command lines (issue 13, items 5 and 9).

- `royalty up` mints the demo key (and the demo credit) only for the demo models on their own
  engine, never when switched off (`mints_demo_key`);
- a demo key is printed only to a terminal, otherwise written to a private file, and never
  through logging;
- no logging call in the packages is handed a key, a password or the database URL;
- the worker children of `royalty up` get the database URL in their environment, not argv.
"""

from __future__ import annotations

import ast
import asyncio
import io
import logging
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metering.usage.recorder import MemoryUsageSink
from royalty import runtime as runtime_module
from royalty.server import DEMO_KEY_FILE, _banner, mints_demo_key, show_demo_key
from royalty.settings import Settings
from serving.registry import Adapter, BaseModel, ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
S = Settings()
KEY = "rk-" + "s3cr3t" * 7


# --- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "mints"),
    [
        (Settings(), True),  # `make demo`: demo models, its own engine
        (S.with_(database={"url": "postgresql://u@h/db"}), True),  # the demo on another Postgres
        (S.with_(demo={"key": False}), False),  # --no-demo-key / ROYALTY_DEMO_KEY=0
        (S.with_(models={"dir": Path("/models")}), False),  # the operator's model tree
        (S.with_(engines={"urls": ("http://vllm:8000",)}), False),  # external engines
        (
            S.with_(
                models={"dir": Path("/m")}, engines={"urls": ("http://e:1",)}, demo={"key": True}
            ),
            False,
        ),
    ],
)
def test_the_demo_key_belongs_to_the_demo_models_only(settings: Settings, mints: bool) -> None:
    assert mints_demo_key(settings) is mints


def test_the_off_switch_reads_from_the_environment() -> None:
    assert Settings.from_env({}).demo.key is True
    assert Settings.from_env({"ROYALTY_DEMO_KEY": "0"}).demo.key is False
    assert not mints_demo_key(Settings.from_env({"ROYALTY_DEMO_KEY": "off"}))
    assert not mints_demo_key(Settings.from_env({"ROYALTY_MODELS_DIR": "/models"}))
    assert not mints_demo_key(Settings.from_env({"ROYALTY_ENGINE_URLS": "http://vllm:8000"}))
    with pytest.raises(ValueError, match="not a boolean"):
        Settings.from_env({"ROYALTY_DEMO_KEY": "maybe"})


class _FakeDb:
    """A database the banner must not touch when no demo key is due."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the banner used the database ({name}) without a demo key")


def _runtime() -> Any:
    registry = ModelRegistry()
    registry.add_base(BaseModel("base", "/models/base"))
    registry.add_adapter(Adapter("recipes", "base", "/models/recipes"))

    async def wait_ready(timeout_s: float) -> None:
        return None

    usage = MemoryUsageSink()  # healthy: the banner says "up"
    return SimpleNamespace(
        wait_ready=wait_ready,
        services=SimpleNamespace(registry=registry, inference=SimpleNamespace(usage=usage)),
        db=_FakeDb(),
    )


@pytest.mark.parametrize(
    "settings",
    [
        S.with_(models={"dir": Path("/models")}),
        S.with_(engines={"urls": ("http://vllm:8000",)}),
        S.with_(demo={"key": False}),
    ],
)
async def test_the_banner_mints_no_key_outside_the_demo(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _banner(_runtime(), settings)
    out = capsys.readouterr().out
    assert "Royalty is up" in out and "demo API key" not in out


# --- where a demo key is shown ----------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_demo_key(tmp_path: Path) -> None:
    term = _Terminal()
    show_demo_key(KEY, "http://127.0.0.1:8000/v1", "recipes", "Recipe:", tmp_path, term)
    assert KEY in term.getvalue()
    assert not (tmp_path / DEMO_KEY_FILE).exists()


def test_a_redirected_stdout_gets_a_private_file_not_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    piped = io.StringIO()  # a container's stdout, a `> log` redirect: not a terminal
    (tmp_path / DEMO_KEY_FILE).write_text("old\n")
    (tmp_path / DEMO_KEY_FILE).chmod(0o644)  # an old file's mode is tightened too
    with caplog.at_level(logging.DEBUG):
        show_demo_key(KEY, "http://127.0.0.1:8000/v1", "recipes", "Recipe:", tmp_path, piped)
    shown = piped.getvalue()
    assert KEY not in shown and str(tmp_path / DEMO_KEY_FILE) in shown
    path = tmp_path / DEMO_KEY_FILE
    assert path.read_text() == KEY + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all(KEY not in r.getMessage() for r in caplog.records)


# --- no logging call is handed a secret -------------------------------------------------------
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
SECRET_NAMES = {
    "key", "api_key", "raw_key", "token", "password", "passwd", "secret", "database_url",
    "db_url", "dsn", "session_id", "digest_key", "prompt_digest_key", "authorization",
}  # fmt: skip


def _names(node: ast.AST) -> set[str]:
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Attribute):
            found.add(n.attr)
            if isinstance(n.value, ast.Attribute):  # a setting in its group: database.url
                found.add(f"{n.value.attr}_{n.attr}")
    return found


def secrets_logged(source: str) -> list[tuple[int, set[str]]]:
    """(line, names) of logging calls whose arguments name a secret."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if node.func.attr not in LOG_METHODS or not (
            isinstance(owner, ast.Name) and owner.id in ("log", "logger", "logging")
        ):
            continue
        named = set()
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            named |= _names(arg) & SECRET_NAMES
        if named:
            hits.append((node.lineno, named))
    return hits


def test_the_log_check_can_fail() -> None:
    assert secrets_logged("log.info('key %s', key)") == [(1, {"key"})]
    assert secrets_logged("log.warning('db %s', settings.database_url)")
    assert secrets_logged("log.warning('db %s', settings.database.url)")
    assert secrets_logged("log.info('ok %s', engine_url)") == []


def test_no_logging_call_is_handed_a_key_or_a_password() -> None:
    hits = []
    for package in ("royalty", "gateway", "metering", "serving", "attribution", "core"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, named in secrets_logged(path.read_text()):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {sorted(named)}")
    assert hits == []


# --- child processes --------------------------------------------------------------------------
async def test_worker_children_get_the_database_url_in_their_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ps` shows every user a process's argv: the URL with its password must not be there."""
    url = "postgresql://royalty:hunter2@db.internal:5432/royalty"
    started: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    async def fake_exec(*argv: str, **kw: Any) -> Any:
        started.append((argv, kw))
        return SimpleNamespace(returncode=None, pid=0)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_exec)
    await runtime_module._start_ledger_worker(url, tmp_path / "ledger.log")
    await runtime_module._start_child(
        ["influence", "worker", "--models-dir", "/models"], tmp_path / "influence.log",
        database_url=url,
    )  # fmt: skip
    assert len(started) == 2
    for argv, kw in started:
        assert not any("hunter2" in a or a == "--database-url" for a in argv), argv
        assert kw["env"]["DATABASE_URL"] == url
    assert started[0][0][1:] == ("ledger", "worker")
    assert started[1][0][1:3] == ("influence", "worker")
