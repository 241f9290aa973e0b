"""The runtime wires influence in: with `influence` on (the default) every adapter response the
inference service hands to its observers becomes a job, and the `royalty influence worker`
child process picks it up (unless `influence_worker` is off: workers run elsewhere); with it
off, neither exists. The child stops with the runtime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.inference import CompletedResponse
from metering.pg import driver
from royalty.runtime import Runtime
from royalty.settings import Settings

pytestmark = pytest.mark.integration

MODELS = sorted(Path(__file__).parents[2].glob(".royalty/models/*/manifest.json"))


def settings(tmp_path: Path, database_url: str, **influence: bool) -> Settings:
    return Settings(data_dir=tmp_path).with_(
        database={"url": database_url}, models={"dir": MODELS[0].parent},
        demo={"datanets": False, "progress": False}, engines={"urls": ("http://127.0.0.1:9",)},
        usage={"post": False}, influence=influence,
    )  # fmt: skip


@pytest.mark.skipif(not MODELS, reason="needs the built demo models (royalty models build)")
async def test_influence_on_queues_responses_and_runs_a_worker(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    assert Settings.from_env({}).influence.enabled is True
    assert Settings.from_env({"ROYALTY_INFLUENCE": "0"}).influence.enabled is False
    assert Settings.from_env({"ROYALTY_INFLUENCE_WORKER": "0"}).influence.worker is False
    assert Settings.from_env({"ROYALTY_INFLUENCE_RETENTION_S": "60"}).influence.retention_s == 60
    rt = Runtime(settings(tmp_path, database_url))
    services = await rt.start()
    try:
        assert rt.influence is not None and rt.influence_worker is not None
        (observe,) = services.inference.observers
        observe(
            CompletedResponse(
                request_id="rt-1",
                account_id=1,
                adapter="retired-adapter",
                endpoint="completions",
                prompt="Recipe:",
                output="soup",
                attribution=None,
            )  # fmt: skip
        )
        deadline = time.monotonic() + 60  # the child imports torch before its first claim
        while True:
            async with driver(engine) as conn:
                row = await conn.fetchrow(
                    "SELECT state, note, output FROM influence_jobs WHERE request_id = 'rt-1'"
                )
            if row is not None and row["state"] == "done":
                break
            assert rt.influence_worker.returncode is None, (
                tmp_path / "logs" / "influence-worker.log"
            ).read_text()[-2000:]
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.2)
        assert row["note"] == "the adapter is no longer active" and row["output"] is None
        child = rt.influence_worker
    finally:
        await rt.stop()
    assert child.returncode is not None, "the worker stops with the runtime"

    gateway_only = Runtime(settings(tmp_path, database_url, worker=False))
    services = await gateway_only.start()
    try:  # jobs are queued, workers run elsewhere
        assert gateway_only.influence is not None and gateway_only.influence_worker is None
        assert services.inference.observers == (gateway_only.influence,)
    finally:
        await gateway_only.stop()

    off = Runtime(settings(tmp_path, database_url, enabled=False))
    services = await off.start()
    try:
        assert off.influence is None and off.influence_worker is None
        assert services.inference.observers == ()
    finally:
        await off.stop()
