"""The model factory on datanet snapshots against a real PostgreSQL: training registers an
adapter whose lineage names exactly its snapshot's records and contributors; rebuilds are
byte-identical; registration is idempotent and conflicts are refused; a running registry
picks adapters up and drops retired ones; the demo world bootstraps idempotently."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.errors import Conflict, Invalid, NotFound
from attribution.lineage import LineageService
from attribution.service import DatanetService
from factory.adapters import AdapterRecipe
from factory.build import DemoModels, FactoryConfig, build_demo_models, demo_contributions
from royalty.adapter_sync import AdapterSync
from royalty.demo import DEMO_CONTRIBUTORS, ensure_demo_world
from royalty.training import train_on_snapshot
from serving.registry import ModelRegistry, UnknownModel

pytestmark = pytest.mark.integration

TINY = FactoryConfig.tiny()
RECIPE = AdapterRecipe.tiny()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    return build_demo_models(tmp_path_factory.mktemp("models"), config=TINY, progress=False)


async def accounts(engine: AsyncEngine, *names: str) -> list[int]:
    async with engine.begin() as conn:
        return [
            (
                await conn.execute(
                    text("INSERT INTO accounts (name) VALUES (:n) RETURNING id"), {"n": n}
                )
            ).scalar_one()
            for n in names
        ]


async def legal_datanet(engine: AsyncEngine, svc: DatanetService) -> tuple[int, list[int]]:
    """A datanet of tiny legal records from three contributors, published."""
    owner, *people = await accounts(engine, "owner", "ana", "ben", "cai")
    d = await svc.create_datanet("legal", owner, "CC-BY-4.0")
    records = demo_contributions("legal", TINY)
    for i, who in enumerate(people):
        await svc.submit_bulk(d.id, who, records[i::3], rate_limit=False)
    await svc.publish(d.id)
    return d.id, [owner, *people]


async def test_train_registers_lineage_of_exactly_the_snapshot(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    svc, lineage = DatanetService(engine), LineageService(engine)
    datanet_id, (owner, *people) = await legal_datanet(engine, svc)
    (snap,) = await svc.snapshots(datanet_id)
    trained = await train_on_snapshot(
        svc, lineage, tiny_base, tmp_path / "adapters", datanet="legal", name="legal-v1",
        owner_account_id=owner, recipe=RECIPE, progress=False,
    )  # fmt: skip
    a = trained.adapter
    assert (a.name, a.snapshot_id, a.owner_account_id) == ("legal-v1", snap.id, owner)
    assert a.record_count == snap.record_count

    # The lineage's records are exactly the snapshot's, in a permutation (training order).
    snapshot_ids = [rid for rid, _ in await svc.snapshot_records(snap.id)]
    order = await lineage.training_order("legal-v1")
    assert sorted(order) == sorted(snapshot_ids) and len(order) == len(set(order))
    on_disk = json.loads((Path(a.path) / "lineage.json").read_text())
    assert on_disk["records"]["training_order"] == order
    assert on_disk["base"]["weights_sha256"] == tiny_base.manifest["base"]["weights_sha256"]
    assert on_disk["snapshot"]["root"] == snap.root
    assert len(on_disk["metrics"]["loss_curve"]) == RECIPE.train.steps

    # Per-contributor counts agree with the snapshot's contents, and name no one else.
    contents = await svc.snapshot_contents(snap.id)
    expected = Counter(r.contributor_account_id for r in contents)
    lin = await lineage.lineage("legal-v1")
    assert {c.account_id: c.records for c in lin.contributors} == dict(expected)
    assert set(expected) <= set(people) and sum(expected.values()) == lin.record_count
    assert lin.snapshot["id"] == snap.id and lin.datanet == {"id": datanet_id, "name": "legal"}
    assert await lineage.contributor_shares("legal-v1") == dict(expected)

    # Contributor -> adapters.
    for who in people:
        mine = await lineage.adapters_of_contributor(who)
        assert [(m.adapter, m.records) for m in mine] == [("legal-v1", expected[who])]
    assert await lineage.adapters_of_contributor(owner) == []

    # Paged records cover the snapshot once.
    page1 = await lineage.records("legal-v1", limit=7)
    page2 = await lineage.records("legal-v1", after=page1[-1].position + 1, limit=10_000)
    assert [r.record_id for r in page1 + page2] == snapshot_ids


async def test_rebuild_is_byte_identical_and_registration_idempotent(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    svc, lineage = DatanetService(engine), LineageService(engine)
    _, (owner, *_) = await legal_datanet(engine, svc)
    kw = dict(datanet="legal", name="legal", owner_account_id=owner, recipe=RECIPE, progress=False)
    first = await train_on_snapshot(svc, lineage, tiny_base, tmp_path / "a", **kw)  # type: ignore[arg-type]
    assert not first.build.cached
    again = await train_on_snapshot(svc, lineage, tiny_base, tmp_path / "a", **kw)  # type: ignore[arg-type]
    assert again.build.cached and again.adapter.id == first.adapter.id
    # From scratch elsewhere: same bytes, and registering it again changes nothing.
    fresh = await train_on_snapshot(svc, lineage, tiny_base, tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert not fresh.build.cached
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (first.build.path / f).read_bytes() == (fresh.build.path / f).read_bytes()
    assert fresh.adapter.id == first.adapter.id

    # Another build under the same active name is refused, unless replacing it.
    other = AdapterRecipe(train=RECIPE.train, seed=RECIPE.seed + 1)
    with pytest.raises(Conflict):
        await train_on_snapshot(
            svc,
            lineage,
            tiny_base,
            tmp_path / "a",
            **{**kw, "recipe": other},  # type: ignore[arg-type]
        )
    replaced = await train_on_snapshot(
        svc,
        lineage,
        tiny_base,
        tmp_path / "a",
        replace=True,
        **{**kw, "recipe": other},  # type: ignore[arg-type]
    )
    assert replaced.adapter.id != first.adapter.id
    assert replaced.adapter.weights_sha256 != first.adapter.weights_sha256
    assert [a.id for a in await lineage.active()] == [replaced.adapter.id]


async def test_train_refuses_what_cannot_be_trained(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    svc, lineage = DatanetService(engine), LineageService(engine)
    (owner,) = await accounts(engine, "o")
    await svc.create_datanet("empty", owner, "CC0-1.0")
    with pytest.raises(Invalid, match="no published snapshot"):
        await train_on_snapshot(
            svc, lineage, tiny_base, tmp_path, datanet="empty", name="x",
            owner_account_id=owner, recipe=RECIPE, progress=False,
        )  # fmt: skip
    with pytest.raises(NotFound):
        await train_on_snapshot(
            svc, lineage, tiny_base, tmp_path, datanet="nope", name="x",
            owner_account_id=owner, recipe=RECIPE, progress=False,
        )  # fmt: skip
    _, (owner2, *_) = await legal_datanet(engine, svc)
    with pytest.raises(NotFound):
        await train_on_snapshot(
            svc, lineage, tiny_base, tmp_path, datanet="legal", name="x", snapshot_id="s" * 64,
            owner_account_id=owner2, recipe=RECIPE, progress=False,
        )  # fmt: skip
    assert await lineage.active() == []


async def test_sync_serves_new_adapters_and_drops_retired(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    svc, lineage = DatanetService(engine), LineageService(engine)
    _, (owner, *_) = await legal_datanet(engine, svc)
    registry = ModelRegistry.from_manifest(tiny_base.root)
    sync = AdapterSync(lineage, registry, tiny_base.base_name, "0" * 64)
    other_base = AdapterSync(
        lineage,
        ModelRegistry.from_manifest(tiny_base.root),
        tiny_base.base_name,
        tiny_base.manifest["base"]["weights_sha256"],
    )
    await train_on_snapshot(
        svc, lineage, tiny_base, tmp_path, datanet="legal", name="clauses",
        owner_account_id=owner, recipe=RECIPE, progress=False,
    )  # fmt: skip
    # An adapter trained on another base is not served by this gateway.
    await sync.sync_once()
    with pytest.raises(UnknownModel):
        registry.resolve("clauses")
    await other_base.sync_once()
    target = other_base.registry.resolve("clauses")
    assert target.adapter is not None and target.adapter.owned_by == "owner"
    assert Path(target.adapter.path, "lineage.json").is_file()  # noqa: ASYNC240
    await lineage.retire("clauses")
    await other_base.sync_once()
    with pytest.raises(UnknownModel):
        other_base.registry.resolve("clauses")


async def test_demo_world_bootstrap_is_idempotent(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    world = await ensure_demo_world(
        engine, tiny_base, tmp_path, config=TINY, recipe=RECIPE, progress=False
    )
    lineage, svc = LineageService(engine), DatanetService(engine)
    assert set(world.adapters) == {"recipes", "astronomy", "legal"}
    for name in world.adapters:
        lin = await lineage.lineage(name)
        names = {c.account for c in lin.contributors}
        assert names == {c for c, _ in DEMO_CONTRIBUTORS[name]}, name
        assert len(names) >= 3
    before = {a.name: (a.id, a.snapshot_id) for a in await lineage.active()}
    counts = {d.name: len(await svc.snapshots(d.id)) for d in await svc.list_datanets()}
    again = await ensure_demo_world(
        engine, tiny_base, tmp_path, config=TINY, recipe=RECIPE, progress=False
    )
    assert again == world
    assert {a.name: (a.id, a.snapshot_id) for a in await lineage.active()} == before
    assert {d.name: len(await svc.snapshots(d.id)) for d in await svc.list_datanets()} == counts


async def test_demo_world_recovers_from_a_half_done_import(
    engine: AsyncEngine, tiny_base: DemoModels, tmp_path: Path
) -> None:
    """A bootstrap killed after creating a datanet and importing part of it finishes the
    job on the next start, without duplicating a record."""
    svc = DatanetService(engine)
    (owner,) = await accounts(engine, "royalty-demo")
    d = await svc.create_datanet("recipes", owner, "CC-BY-4.0")
    (who,) = await accounts(engine, "chef-amara")
    await svc.submit_bulk(d.id, who, demo_contributions("recipes", TINY)[:10], rate_limit=False)
    await ensure_demo_world(engine, tiny_base, tmp_path, config=TINY, recipe=RECIPE, progress=False)
    async with engine.connect() as conn:
        dup = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM contributions WHERE datanet_id = :d "
                    "AND status = 'accepted' GROUP BY content_hash HAVING count(*) > 1"
                ),
                {"d": d.id},
            )
        ).all()
    assert dup == []
    (snap,) = await svc.snapshots(d.id)
    assert snap.record_count > 10


def test_damaged_adapter_build_is_rebuilt(tiny_base: DemoModels, tmp_path: Path) -> None:
    from factory.adapters import SnapshotRef, TrainingExample, build_adapter

    ex = [TrainingExample(i + 1, **r) for i, r in enumerate(demo_contributions("legal", TINY))]  # type: ignore[arg-type]
    ref = SnapshotRef("s", "00" * 32, 1, "legal", len(ex), 0)
    a = build_adapter(tiny_base, "legal", ref, ex, tmp_path, recipe=RECIPE, progress=False)
    weights = a.path / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"\0" * 8)
    b = build_adapter(tiny_base, "legal", ref, ex, tmp_path, recipe=RECIPE, progress=False)
    assert not b.cached and (b.path / "adapter_model.safetensors").read_bytes() == good
    shutil.rmtree(b.path)
    with pytest.raises(ValueError, match="no records"):
        build_adapter(tiny_base, "legal", ref, [], tmp_path, recipe=RECIPE, progress=False)
