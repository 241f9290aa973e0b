"""`royalty up`: the runtime behind uvicorn, with the banner a new user needs.

The demo key belongs to the demo: `royalty up` mints one (and tops the shared `demo` account
up to 100 credits) only when it serves the demo models on its own engine, i.e. with no
`--models-dir`/`ROYALTY_MODELS_DIR` and no `--engine-url`/`ROYALTY_ENGINE_URLS`, and never with
`--no-demo-key` or `ROYALTY_DEMO_KEY=0` (`mints_demo_key`). A key never goes through logging:
the banner prints it to stdout only when stdout is a terminal; otherwise (a container, a
redirected run) it is written to `DATA_DIR/demo-key`, readable by the owner only, and the
banner names that file instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import uvicorn
from rich.console import Console

from gateway.app import create_app
from gateway.auth import KeyInfo, PostgresKeyStore
from royalty.runtime import Runtime
from royalty.settings import Settings

log = logging.getLogger(__name__)
out = Console()


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process
        # with status 143; SIGTERM is the documented way to stop royalty, so exit 0 instead.
        self._captured_signals.clear()


def mints_demo_key(settings: Settings) -> bool:
    """Whether `royalty up` creates the demo key and demo credit: only for the demo models
    (no model tree of the operator's) on the engine it supervises itself (no external engines),
    and only when not switched off."""
    return settings.demo.key and settings.models.dir is None and not settings.engines.urls


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn believes `X-Forwarded-Proto`/`-For` only from `settings.http.trusted_proxies`
    (none by default): the scheme the dashboard's `Secure` cookie flag follows is the
    connection's own, or what a trusted TLS proxy says, never what any client claims."""
    return uvicorn.Config(
        app,
        host=settings.http.host,
        port=settings.http.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        http="httptools",
        timeout_graceful_shutdown=30,
        proxy_headers=bool(settings.http.trusted_proxies),
        forwarded_allow_ips=list(settings.http.trusted_proxies) or None,
    )


async def serve(settings: Settings, *, demo_key: bool = True) -> None:
    """`demo_key=False` (`--no-demo-key`) switches the demo key off like ROYALTY_DEMO_KEY=0."""
    if not demo_key:
        settings = settings.with_(demo={"key": False})
    runtime = Runtime(settings)
    services = await runtime.start()
    app = create_app(services, on_shutdown=[runtime.stop])
    server = _Server(uvicorn_config(app, settings))
    banner = asyncio.create_task(_banner(runtime, settings))
    try:
        await server.serve()
    finally:
        banner.cancel()


async def _banner(runtime: Runtime, settings: Settings) -> None:
    await runtime.wait_ready(timeout_s=900)
    assert runtime.services is not None and runtime.db is not None
    base = f"http://{settings.http.host}:{settings.http.port}/v1"
    models = [m.name for m in runtime.services.registry.bases] + [
        a.name for a in runtime.services.registry.adapters
    ]
    unrecordable = runtime.services.inference.usage.health()
    if unrecordable is not None:  # up, but refusing every request: say so, not "up"
        out.print(
            f"[bold red]Royalty is running at {base} but refuses requests:[/] usage cannot be "
            f"recorded ({unrecordable}); /healthz answers 503 until it can."
        )
    else:
        out.print(f"[bold green]Royalty is up[/] at [bold]{base}[/]  models: {', '.join(models)}")
    if not mints_demo_key(settings):
        return
    key, info = await PostgresKeyStore(runtime.db).create(
        "demo", frozenset({"inference"}), None, None
    )
    await _demo_credit(runtime, info)
    model, prompt = _example(runtime)
    show_demo_key(key, base, model, prompt, settings.data_dir)


DEMO_KEY_FILE = "demo-key"


def show_demo_key(
    key: str, base: str, model: str, prompt: str, data_dir: Path, stream: TextIO | None = None
) -> None:
    """The demo key and a copy-paste example: on `stream` (stdout) itself only when it is a
    terminal; otherwise in `data_dir/demo-key` (mode 0600), named on `stream`, so that a key
    never lands in a log collected from stdout."""
    stream = stream if stream is not None else sys.stdout
    console = Console(file=stream)
    if stream.isatty():
        console.print(f"demo API key (account 'demo'): [bold]{key}[/]")
        shown = key
    else:
        path = _write_private(data_dir / DEMO_KEY_FILE, key + "\n")
        console.print(
            f"demo API key (account 'demo') written to {path} (stdout is not a terminal, and "
            "keys never go to logs)",
            soft_wrap=True,
            highlight=False,
        )
        shown = f'"$(cat {path})"'
    console.print(
        "try it:\n"
        f'  OPENAI_BASE_URL={base} OPENAI_API_KEY={shown} {_python()} -c "from openai import OpenAI; '
        f"print(OpenAI().completions.create(model='{model}', prompt='{prompt}', max_tokens=40, "
        "temperature=0)"
        '.choices[0].text)"',
        soft_wrap=True,
        highlight=False,
    )


def _write_private(path: Path, text: str) -> Path:
    """Write `text` to `path`, readable and writable by the owner only (even if it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path.resolve()


def _example(runtime: Runtime) -> tuple[str, str]:
    """An adapter and a prompt of its domain (from its registration), recipes first."""
    assert runtime.services is not None
    registry = runtime.services.registry
    for adapter in sorted(registry.adapters, key=lambda a: (a.name != "recipes", a.name)):
        prompt = adapter.example_prompt
        if isinstance(prompt, str) and "'" not in prompt:
            return adapter.name, prompt
    return registry.bases[0].name, "Once upon a time"


DEMO_CREDIT_MICROS = 100_000_000
"""100 credits: the demo account is topped up to at least this much at every start."""


async def _demo_credit(runtime: Runtime, info: KeyInfo) -> None:
    from metering.ledger.book import PostgresLedger

    assert runtime.db is not None
    ledger = PostgresLedger(runtime.db)
    balance = await ledger.balance("consumer", info.account_id)
    if balance.balance < DEMO_CREDIT_MICROS:
        await ledger.top_up(info.account_id, DEMO_CREDIT_MICROS - balance.balance, "demo credit")


def _python() -> str:
    return sys.executable
