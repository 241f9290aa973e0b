"""Usage capture: the usage record, the durable local log, the recorder with its fallbacks,
the shipper to Postgres, the `usage_events` store and its queries."""
