"""Prices and split policies in Postgres (append-only versions; the row id is the version)."""

from __future__ import annotations

import datetime as dt

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.pg import driver
from metering.pricing import Price, PriceBook, SplitPolicy

INSERT_PRICE = """
INSERT INTO prices (base_model, adapter, input_micros_per_m, output_micros_per_m, effective_from)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, base_model, adapter, input_micros_per_m, output_micros_per_m, effective_from
"""
SELECT_PRICES = """
SELECT id, base_model, adapter, input_micros_per_m, output_micros_per_m, effective_from
FROM prices ORDER BY base_model, adapter, effective_from
"""
INSERT_POLICY = """
INSERT INTO split_policies (adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, effective_from)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, effective_from
"""
SELECT_POLICIES = """
SELECT id, adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, effective_from
FROM split_policies ORDER BY adapter, effective_from
"""


class CatalogError(ValueError):
    pass


async def load_price_book(conn: asyncpg.Connection) -> PriceBook:
    prices = [Price(**dict(r)) for r in await conn.fetch(SELECT_PRICES)]
    policies = [SplitPolicy(**dict(r)) for r in await conn.fetch(SELECT_POLICIES)]
    return PriceBook(prices, policies)


class PostgresCatalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def set_price(
        self, base_model: str, adapter: str, input_micros_per_m: int, output_micros_per_m: int,
        effective_from: dt.datetime | None = None,
    ) -> Price:  # fmt: skip
        if not base_model.strip():
            raise CatalogError("base model must not be empty")
        if min(input_micros_per_m, output_micros_per_m) < 0:
            raise CatalogError("prices must be >= 0")
        when = effective_from or dt.datetime.now(dt.UTC)
        if when.tzinfo is None:
            raise CatalogError("effective_from needs a time zone")
        async with driver(self._engine) as conn:
            try:
                row = await conn.fetchrow(
                    INSERT_PRICE, base_model, adapter, input_micros_per_m, output_micros_per_m, when
                )
            except asyncpg.UniqueViolationError:
                raise CatalogError(
                    f"a price for {base_model}/{adapter or '-'} already starts at {when.isoformat()}"
                ) from None
        return Price(**dict(row))

    async def set_policy(
        self, adapter: str, protocol_ppm: int, operator_ppm: int, owner_ppm: int, data_ppm: int,
        effective_from: dt.datetime | None = None,
    ) -> SplitPolicy:  # fmt: skip
        when = effective_from or dt.datetime.now(dt.UTC)
        SplitPolicy(0, adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, when)  # validates
        async with driver(self._engine) as conn:
            try:
                row = await conn.fetchrow(
                    INSERT_POLICY, adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, when
                )
            except asyncpg.UniqueViolationError:
                raise CatalogError(f"a policy for {adapter or '-'} already starts then") from None
        return SplitPolicy(**dict(row))

    async def prices(self) -> list[Price]:
        async with driver(self._engine) as conn:
            return [Price(**dict(r)) for r in await conn.fetch(SELECT_PRICES)]

    async def book(self) -> PriceBook:
        async with driver(self._engine) as conn:
            return await load_price_book(conn)
