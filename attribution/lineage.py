"""The adapter registry and lineage: adapter <- snapshot <- records <- contributors.

An adapter is registered once the model factory has trained it on one published snapshot;
its row keeps the factory's lineage.json verbatim (records in training order,
hyperparameters, metrics, weights hash). Lineage queries answer both directions: for an
adapter, its datanet, snapshot, records and per-contributor record counts; for a
contributor, the adapters trained on their records. Metering's baseline split (the data
share of a response with no finer attribution) uses `contributor_shares`.

Record hashes are not public. A record hash is an unsalted SHA-256 of the record's normalised
content, so whoever holds it can confirm a guessed text (short records are easily guessed).
`records` shows a record's hash only to a viewer who may read that record: its contributor
(who needs it to check their record's inclusion proof against the snapshot root), the
datanet's owner and curators, and trusted callers (`viewer=None`: admin, CLI, workers).
Everyone else sees positions, record ids and contributor ids. The lineage document names no
record hash (only the snapshot root and a hash of the training order).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import msgspec
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution import lineage_sql as sql
from attribution.errors import Conflict, Invalid, NotFound
from attribution.textnorm import text_problem

MAX_ADAPTER_NAME_CHARS = 256

__all__ = [
    "AdapterContributor",
    "AdapterRecord",
    "AdapterRegistration",
    "ContributorAdapter",
    "Lineage",
    "LineageService",
    "RegisteredAdapter",
]


class AdapterRegistration(msgspec.Struct, kw_only=True):
    """What the factory hands over: the built adapter and its lineage.json."""

    name: str
    base_model: str
    base_weights_sha256: str
    owner_account_id: int
    path: str
    weights_sha256: str
    lineage: dict[str, Any]
    price_input_micros: int | None = None
    price_output_micros: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class RegisteredAdapter(msgspec.Struct, kw_only=True):
    id: int
    name: str
    base_model: str
    base_weights_sha256: str
    owner_account_id: int
    owner: str
    datanet_id: int
    datanet: str
    snapshot_id: str
    path: str
    weights_sha256: str
    lineage_sha256: str
    record_count: int
    price_input_micros: int | None
    price_output_micros: int | None
    metadata: dict[str, Any]
    status: str
    created_at: str
    created: int


class AdapterContributor(msgspec.Struct):
    account_id: int
    account: str
    records: int


class AdapterRecord(msgspec.Struct, omit_defaults=True):
    position: int
    record_id: int
    contributor_account_id: int
    record_hash: str | None = None
    """Absent unless the viewer may read the record (module docstring)."""


class Lineage(msgspec.Struct, kw_only=True):
    """The public lineage of an adapter (what `GET /v1/adapters/{name}/lineage` returns)."""

    object: str = "adapter.lineage"
    adapter: str
    status: str
    owner: str
    base_model: dict[str, Any]
    datanet: dict[str, Any]
    snapshot: dict[str, Any]
    record_count: int
    training_order_sha256: str
    contributors: list[AdapterContributor]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    weights_sha256: str
    lineage_sha256: str
    created_at: str


class ContributorAdapter(msgspec.Struct):
    adapter: str
    status: str
    datanet: str
    snapshot_id: str
    records: int
    """How many of the contributor's records the adapter was trained on."""
    adapter_records: int
    created_at: str


def _lineage_bytes(lineage: Mapping[str, Any]) -> bytes:
    return json.dumps(lineage, indent=2, sort_keys=True).encode() + b"\n"


def _row(r: Any) -> RegisteredAdapter:
    return RegisteredAdapter(
        id=r.id,
        name=r.name,
        base_model=r.base_model,
        base_weights_sha256=r.base_weights_sha256,
        owner_account_id=r.owner_account_id,
        owner=r.owner_name,
        datanet_id=r.datanet_id,
        datanet=r.datanet_name,
        snapshot_id=r.snapshot_id,
        path=r.path,
        weights_sha256=r.weights_sha256,
        lineage_sha256=r.lineage_sha256,
        record_count=r.record_count,
        price_input_micros=r.price_input_micros,
        price_output_micros=r.price_output_micros,
        metadata=json.loads(r.metadata) if r.metadata else {},
        status=r.status,
        created_at=r.created_at,
        created=int(r.created_epoch),
    )


class LineageService:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def register(
        self, reg: AdapterRegistration, *, replace: bool = False
    ) -> RegisteredAdapter:
        """Register a trained adapter under its name. Registering the same build again is a
        no-op that returns the existing row; another build under an active name is a
        `Conflict` unless `replace`, which retires the old one (its history stays)."""
        lineage = reg.lineage
        snap = lineage.get("snapshot") or {}
        if (
            lineage.get("adapter") != reg.name
            or lineage.get("weights_sha256") != reg.weights_sha256
        ):
            raise Invalid("the lineage does not describe this adapter build")
        count = int((lineage.get("records") or {}).get("count", 0))
        if count <= 0 or not snap.get("id"):
            raise Invalid("an adapter's lineage must name its snapshot and records")
        async with self.engine.begin() as conn:
            await conn.execute(sql.LOCK_ADAPTER_NAME, {"name": reg.name})
            current = (await conn.execute(sql.SELECT_ACTIVE_BY_NAME, {"name": reg.name})).first()
            if current is not None:
                if (
                    current.weights_sha256 == reg.weights_sha256
                    and current.snapshot_id == snap["id"]
                    and current.base_weights_sha256 == reg.base_weights_sha256
                ):
                    return _row(current)
                if not replace:
                    raise Conflict(
                        f"an adapter named {reg.name!r} is registered "
                        f"(trained on snapshot {current.snapshot_id}); retire it or replace it"
                    )
                await conn.execute(sql.RETIRE_ADAPTER, {"id": current.id})
            try:
                new_id = (
                    await conn.execute(
                        sql.INSERT_ADAPTER,
                        {
                            "name": reg.name,
                            "base_model": reg.base_model,
                            "base_weights_sha256": reg.base_weights_sha256,
                            "owner": reg.owner_account_id,
                            "datanet_id": int(snap["datanet_id"]),
                            "snapshot_id": snap["id"],
                            "path": reg.path,
                            "weights_sha256": reg.weights_sha256,
                            "lineage_sha256": hashlib.sha256(_lineage_bytes(lineage)).hexdigest(),
                            "lineage": json.dumps(lineage),
                            "record_count": count,
                            "price_input": reg.price_input_micros,
                            "price_output": reg.price_output_micros,
                            "metadata": json.dumps(reg.metadata),
                        },
                    )
                ).scalar_one()
            except IntegrityError:
                raise NotFound("the owner account, datanet or snapshot does not exist") from None
            row = (await conn.execute(sql.SELECT_ACTIVE_BY_NAME, {"name": reg.name})).one()
            assert row.id == new_id
            return _row(row)

    async def retire(self, name: str) -> RegisteredAdapter:
        async with self.engine.begin() as conn:
            row = (await conn.execute(sql.SELECT_ACTIVE_BY_NAME, {"name": name})).first()
            if row is None:
                raise NotFound(f"no active adapter named {name!r}")
            await conn.execute(sql.RETIRE_ADAPTER, {"id": row.id})
        return msgspec.structs.replace(_row(row), status="retired")

    async def get(self, name: str) -> RegisteredAdapter:
        if len(name) > MAX_ADAPTER_NAME_CHARS or text_problem(name) is not None:
            # no adapter can have such a name; asking the database would only fail there
            raise NotFound(f"no adapter named {name[:64]!r}")
        async with self.engine.connect() as conn:
            row = (await conn.execute(sql.SELECT_ACTIVE_BY_NAME, {"name": name})).first()
        if row is None:
            raise NotFound(f"no adapter named {name!r}")
        return _row(row)

    async def active(self) -> list[RegisteredAdapter]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sql.SELECT_ACTIVE)).all()
        return [_row(r) for r in rows]

    async def contributors(self, name: str) -> list[AdapterContributor]:
        adapter = await self.get(name)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sql.SELECT_ADAPTER_CONTRIBUTORS, {"snapshot_id": adapter.snapshot_id}
                )
            ).all()
        return [AdapterContributor(r.account_id, r.account, int(r.records)) for r in rows]

    async def contributor_shares(self, name: str) -> dict[int, int]:
        """Contributor account id -> records in the adapter's training snapshot (the
        baseline attribution of a response that has no finer evidence)."""
        return {c.account_id: c.records for c in await self.contributors(name)}

    async def lineage(self, name: str) -> Lineage:
        adapter = await self.get(name)
        async with self.engine.connect() as conn:
            doc = json.loads(
                (await conn.execute(sql.SELECT_LINEAGE_JSON, {"id": adapter.id})).scalar_one()
            )
            rows = (
                await conn.execute(
                    sql.SELECT_ADAPTER_CONTRIBUTORS, {"snapshot_id": adapter.snapshot_id}
                )
            ).all()
        snap = doc["snapshot"]
        return Lineage(
            adapter=adapter.name,
            status=adapter.status,
            owner=adapter.owner,
            base_model={"name": adapter.base_model, "weights_sha256": adapter.base_weights_sha256},
            datanet={"id": adapter.datanet_id, "name": adapter.datanet},
            snapshot={
                "id": snap["id"],
                "root": snap["root"],
                "record_count": snap["record_count"],
                "token_count": snap["token_count"],
            },
            record_count=adapter.record_count,
            training_order_sha256=doc["records"]["training_order_sha256"],
            contributors=[
                AdapterContributor(r.account_id, r.account, int(r.records)) for r in rows
            ],
            hyperparameters=doc.get("hyperparameters", {}),
            metrics={k: v for k, v in doc.get("metrics", {}).items()},
            weights_sha256=adapter.weights_sha256,
            lineage_sha256=adapter.lineage_sha256,
            created_at=adapter.created_at,
        )

    async def training_order(self, name: str) -> list[int]:
        """The adapter's record ids in the order the factory trained on them."""
        adapter = await self.get(name)
        async with self.engine.connect() as conn:
            doc = json.loads(
                (await conn.execute(sql.SELECT_LINEAGE_JSON, {"id": adapter.id})).scalar_one()
            )
        return [int(x) for x in doc["records"]["training_order"]]

    async def records(
        self, name: str, *, after: int = 0, limit: int = 1000, viewer: int | None = None
    ) -> list[AdapterRecord]:
        """The adapter's training records (snapshot order), a page at a time. A record's hash
        is shown to a `viewer` who may read the record (module docstring); `None` is a
        trusted caller and sees every hash."""
        adapter = await self.get(name)
        async with self.engine.connect() as conn:
            sees_all = viewer is None
            if not sees_all:
                d = (
                    await conn.execute(sql.SELECT_DATANET_CURATORS, {"id": adapter.datanet_id})
                ).one()
                sees_all = viewer == d.owner_account_id or viewer in d.curators
            rows = (
                await conn.execute(
                    sql.SELECT_ADAPTER_RECORDS,
                    {"snapshot_id": adapter.snapshot_id, "after": after, "limit": limit},
                )
            ).all()
        return [
            AdapterRecord(
                r.position,
                r.record_id,
                r.contributor_account_id,
                bytes(r.record_hash).hex()
                if sees_all or r.contributor_account_id == viewer
                else None,
            )
            for r in rows
        ]

    async def adapters_of_contributor(self, account_id: int) -> list[ContributorAdapter]:
        """Every adapter (active or retired) trained on records of `account_id`."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sql.SELECT_CONTRIBUTOR_ADAPTERS, {"account_id": account_id})
            ).all()
        return [
            ContributorAdapter(
                adapter=r.name,
                status=r.status,
                datanet=r.datanet_name,
                snapshot_id=r.snapshot_id,
                records=int(r.contributor_records),
                adapter_records=r.record_count,
                created_at=r.created_at,
            )
            for r in rows
        ]
