"""End-to-end fixtures: the demo models (built once, cached), a real vLLM CPU server, a fresh
database, and `royalty up` as a child process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from support.pg import create_database, drop_database
from support.procs import REPO, Gateway, vllm_server


@pytest.fixture(scope="session", autouse=True)
def demo_world_env() -> Iterator[None]:
    """Every `royalty up` of these tests starts the demo world (three datanets, adapters
    trained on their snapshots), sharing one adapter cache: the first start trains them."""
    saved = {k: os.environ.get(k) for k in ("ROYALTY_DEMO", "ROYALTY_ADAPTERS_DIR")}
    os.environ["ROYALTY_DEMO"] = "1"
    os.environ["ROYALTY_ADAPTERS_DIR"] = str(REPO / ".royalty" / "adapters")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def demo_models():  # type: ignore[no-untyped-def]
    from factory import build_demo_models

    return build_demo_models(REPO / ".royalty" / "models", progress=False)


@pytest.fixture(scope="session")
def vllm_url(demo_models, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with vllm_server(str(demo_models.base_path), demo_models.base_name, log) as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """One database for the session's gateway (it runs the migrations itself)."""
    url = await create_database(postgres_server_url)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, url)


@pytest.fixture
async def fresh_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    url = await create_database(postgres_server_url)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, url)


@pytest.fixture(scope="session")
def gateway(vllm_url, database_url, demo_models, tmp_path_factory) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = Gateway(
        tmp_path_factory.mktemp("gateway"),
        [
            "--engine-url",
            vllm_url,
            "--models-dir",
            str(demo_models.root),
            "--database-url",
            database_url,
        ],  # fmt: skip
    ).start(timeout_s=1200)  # the first start trains the demo adapters
    yield gw
    code = gw.stop()
    assert code == 0, gw.log()[-3000:]
