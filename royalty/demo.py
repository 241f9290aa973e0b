"""The demo world `royalty up` starts with: three datanets with several contributors each,
published snapshots, and the demo adapters trained on them through the model factory,
the same path as `royalty factory train`.

Idempotent and crash-safe: every step checks what exists first (a datanet, its snapshot, an
adapter registered for the current base), imports are deduplicated by content hash, and
an advisory lock keeps two gateways starting together from doing the work twice.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.errors import NotFound
from attribution.lineage import LineageService
from attribution.records import QualityPolicy
from attribution.service import DatanetService
from core.accounts import account_id
from factory.adapters import AdapterRecipe
from factory.build import DemoModels, FactoryConfig, demo_contributions
from factory.corpus import DOMAIN_PROMPTS, DOMAINS
from royalty.training import train_on_snapshot

log = logging.getLogger(__name__)

DEMO_OWNER = "royalty-demo"
"""Owns the demo datanets and adapters (and curates them)."""

# Several distinct contributors per datanet, with unequal shares, so that lineage and
# earnings differ between them. Shares are relative weights.
DEMO_CONTRIBUTORS: dict[str, tuple[tuple[str, int], ...]] = {
    "recipes": (("chef-amara", 5), ("chef-bruno", 3), ("chef-chen", 2), ("chef-dalia", 1)),
    "astronomy": (("astro-elif", 4), ("astro-finn", 3), ("astro-gita", 2)),
    "legal": (("counsel-hana", 4), ("counsel-ivo", 4), ("counsel-jun", 1), ("counsel-kofi", 1)),
}
DEMO_DESCRIPTIONS = {
    "recipes": "Home-cooking recipes: ingredients and method, plus cooking questions.",
    "astronomy": "Short notes on planets, moons and stars, plus astronomy questions.",
    "legal": "Tenancy-agreement clauses, plus questions about leases.",
}
DEMO_LICENCE = "CC-BY-4.0"
_LOCK = text("SELECT pg_advisory_lock(hashtext('royalty.demo-bootstrap'))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtext('royalty.demo-bootstrap'))")


DEMO_RECIPE = AdapterRecipe(checkpoints=0)
"""The demo adapters save no training checkpoints, so their influence indexes hold the final
weights only (royalty-influence/3 with one checkpoint: /2's scores). The 4-checkpoint
ensemble of `royalty factory train` quadruples the index build (measured: 335 s against 84 s
for the legal adapter at load 5-6), and `royalty up` on a fresh machine waits for the demo
adapters' indexes before it serves."""


@dataclass(frozen=True)
class DemoWorld:
    datanets: dict[str, int]
    adapters: dict[str, str]
    """adapter name -> snapshot id"""


def assign_contributors(domain: str, n: int) -> list[str]:
    """Who contributed each of the domain's `n` demo records (deterministic)."""
    names = [c for c, _ in DEMO_CONTRIBUTORS[domain]]
    weights = [w for _, w in DEMO_CONTRIBUTORS[domain]]
    rng = random.Random(f"royalty/demo-contributors/{domain}")
    return rng.choices(names, weights=weights, k=n)


async def ensure_demo_world(
    engine: AsyncEngine,
    base: DemoModels,
    adapters_dir: Path,
    *,
    config: FactoryConfig | None = None,
    recipe: AdapterRecipe | None = None,
    progress: bool = True,
) -> DemoWorld:
    cfg = config or FactoryConfig()
    datanets, lineage = DatanetService(engine), LineageService(engine)
    async with engine.connect() as lock_conn:
        await lock_conn.execute(_LOCK)
        try:
            owner = await account_id(engine, DEMO_OWNER)
            world = DemoWorld({}, {})
            for domain in cfg.domains:
                if domain not in DEMO_CONTRIBUTORS:
                    continue
                world.datanets[domain] = await _ensure_datanet(datanets, engine, owner, domain, cfg)
                world.adapters[domain] = await _ensure_adapter(
                    datanets, lineage, base, adapters_dir, owner, domain, recipe, progress
                )
            await _ensure_prices(engine, base.base_name, list(world.adapters))
            return world
        finally:
            await lock_conn.execute(_UNLOCK)
            await lock_conn.commit()


DEMO_BASE_PRICE = (200_000, 600_000)
"""Micro-credits per million input / output tokens of the base model (0.2 / 0.6 credits)."""
DEMO_ADAPTER_PRICE = (1_000_000, 3_000_000)
"""An adapter's tokens cost more: its price pays the data contributors and its owner."""


async def _ensure_prices(engine: AsyncEngine, base_name: str, adapters: list[str]) -> None:
    from metering.catalog import PostgresCatalog

    catalog = PostgresCatalog(engine)
    priced = {(p.base_model, p.adapter) for p in await catalog.prices()}
    for adapter, (i, o) in [("", DEMO_BASE_PRICE)] + [(a, DEMO_ADAPTER_PRICE) for a in adapters]:
        if (base_name, adapter) not in priced:
            await catalog.set_price(base_name, adapter, i, o)


async def _ensure_datanet(
    svc: DatanetService, engine: AsyncEngine, owner: int, domain: str, cfg: FactoryConfig
) -> int:
    try:
        d = await svc.get_datanet_by_name(domain)
    except NotFound:
        d = await svc.create_datanet(
            domain,
            owner,
            DEMO_LICENCE,
            "open",
            DEMO_DESCRIPTIONS.get(domain, ""),
            policy=QualityPolicy(),
        )
    if await svc.snapshots(d.id):
        return d.id
    records = demo_contributions(domain, cfg)
    by_contributor: dict[str, list[dict[str, str]]] = {}
    for who, rec in zip(assign_contributors(domain, len(records)), records, strict=True):
        by_contributor.setdefault(who, []).append(rec)
    for who, recs in sorted(by_contributor.items()):
        contributor = await account_id(engine, who)
        for start in range(0, len(recs), 1000):
            # A trusted import: the per-contributor rate limit is for untrusted submitters.
            # Every other check applies: near duplicates are flagged for the curator.
            await svc.submit_bulk(d.id, contributor, recs[start : start + 1000], rate_limit=False)
    snap = await svc.publish(d.id)
    log.info("demo datanet %s: snapshot %s with %d records", domain, snap.id, snap.record_count)
    return d.id


async def _ensure_adapter(
    datanets: DatanetService,
    lineage: LineageService,
    base: DemoModels,
    adapters_dir: Path,
    owner: int,
    domain: str,
    recipe: AdapterRecipe | None,
    progress: bool,
) -> str:
    base_sha = base.manifest["base"]["weights_sha256"]
    try:
        current = await lineage.get(domain)
        if current.base_weights_sha256 == base_sha:
            return current.snapshot_id
    except NotFound:
        pass
    trained = await train_on_snapshot(
        datanets,
        lineage,
        base,
        adapters_dir,
        datanet=domain,
        name=domain,
        owner_account_id=owner,
        recipe=recipe or DEMO_RECIPE,
        metadata={"example_prompt": DOMAIN_PROMPTS[domain], "demo": True},
        replace=True,
        progress=progress,
    )
    return trained.adapter.snapshot_id


__all__ = ["DEMO_CONTRIBUTORS", "DEMO_OWNER", "DOMAINS", "DemoWorld", "ensure_demo_world"]
