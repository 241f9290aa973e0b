"""`royalty up`: the runtime behind uvicorn, with the banner a new user needs."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from rich.console import Console

from gateway.app import create_app
from gateway.auth import KeyInfo, PostgresKeyStore
from gateway.runtime import Runtime
from gateway.settings import Settings

log = logging.getLogger(__name__)
out = Console()


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process
        # with status 143; SIGTERM is the documented way to stop royalty, so exit 0 instead.
        self._captured_signals.clear()


async def serve(settings: Settings, *, demo_key: bool = True) -> None:
    runtime = Runtime(settings)
    services = await runtime.start()
    app = create_app(services, on_shutdown=[runtime.stop])
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        http="httptools",
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    banner = asyncio.create_task(_banner(runtime, settings, demo_key))
    try:
        await server.serve()
    finally:
        banner.cancel()


async def _banner(runtime: Runtime, settings: Settings, demo_key: bool) -> None:
    await runtime.wait_ready(timeout_s=900)
    assert runtime.services is not None and runtime.db is not None
    base = f"http://{settings.host}:{settings.port}/v1"
    models = [m.name for m in runtime.services.registry.bases] + [
        a.name for a in runtime.services.registry.adapters
    ]
    out.print(f"[bold green]Royalty is up[/] at [bold]{base}[/]  models: {', '.join(models)}")
    if not demo_key:
        return
    key, info = await PostgresKeyStore(runtime.db).create(
        "demo", frozenset({"inference"}), None, None
    )
    await _demo_credit(runtime, info)
    model, prompt = _example(runtime)
    out.print(f"demo API key (account 'demo'): [bold]{key}[/]")
    out.print(
        "try it:\n"
        f'  OPENAI_BASE_URL={base} OPENAI_API_KEY={key} {_python()} -c "from openai import OpenAI; '
        f"print(OpenAI().completions.create(model='{model}', prompt='{prompt}', max_tokens=40, "
        "temperature=0)"
        '.choices[0].text)"',
        soft_wrap=True,
        highlight=False,
    )


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
    from metering.ledger import PostgresLedger

    assert runtime.db is not None
    ledger = PostgresLedger(runtime.db)
    balance = await ledger.balance("consumer", info.account_id)
    if balance.balance < DEMO_CREDIT_MICROS:
        await ledger.top_up(info.account_id, DEMO_CREDIT_MICROS - balance.balance, "demo credit")


def _python() -> str:
    import sys

    return sys.executable
