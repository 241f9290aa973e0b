"""Fixtures of the adversarial suite: one real stack (`royalty up` with its supervised engine)
for the whole module, its consumer keys, and the table of results (written under the
session's tmp dir and printed at the end of the run)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from adv_checks import Scoreboard
from adv_load import Client
from adv_stack import Stack
from support.pg import create_database, drop_database
from support.procs import REPO

_BOARD: Scoreboard | None = None

FIRST_START_S = 2400
"""The first start may train the demo adapters into the shared cache (several minutes on a
few CPUs), then starts the engine."""


@pytest.fixture(scope="module")
def demo_models():  # type: ignore[no-untyped-def]
    from factory import build_demo_models

    return build_demo_models(REPO / ".royalty" / "models", progress=False)


@pytest.fixture(scope="module")
async def adversarial_db(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database on the machine's server (the stack migrates it)."""
    url = await create_database(postgres_server_url)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, url)


@pytest.fixture(scope="module")
def stack(adversarial_db: str, demo_models: Any, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:  # fmt: skip
    s = Stack.create(tmp_path_factory.mktemp("adversarial"), adversarial_db, demo_models.root)
    try:
        s.start(FIRST_START_S)
        yield s
    finally:
        forced = s.shutdown()
        if forced:
            print(f"\nadversarial stack teardown had to force: {forced}")


@pytest.fixture(scope="module")
def clients(stack: Stack) -> list[Client]:
    """Consumers with credit, whose keys are used (so "already seen") before any fault."""
    return [
        Client(name, stack.key(name, "inference", credit_micros=1_000_000_000))
        for name in ("adv-consumer-a", "adv-consumer-b", "adv-consumer-c")
    ]


@pytest.fixture(scope="session")
def scoreboard(tmp_path_factory: pytest.TempPathFactory) -> Scoreboard:
    global _BOARD
    _BOARD = Scoreboard(Path(tmp_path_factory.mktemp("adversarial-report")) / "faults.md")
    return _BOARD


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _BOARD is None or not _BOARD.rows:
        return
    terminalreporter.section("adversarial suite: faults on the real stack")
    for line in _BOARD.render().splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(table written to {_BOARD.path})")
