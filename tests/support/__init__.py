"""What the test suites share (tests/ is on `sys.path`: tests/conftest.py puts it there).

- `pg`: real PostgreSQL for tests (the machine's server or a private pgserver one; fresh
  migrated databases); tests/conftest.py turns it into the `database_url`, `engine` and
  `private_postgres` fixtures.
- `app`: the gateway app over a real PostgreSQL database in Litestar's test client, the one
  way integration tests serve HTTP against Postgres.
- `gateway_harness`: an in-process gateway over the fake engine with in-memory keys and usage
  sink, the fast harness for the HTTP surface.
- `usage_events`: the one way to make a usage event.
- `openai_schema`: payloads checked against OpenAI's published schemas (tests/data).
- `procs`: the real processes of end-to-end tests (vLLM, `royalty up`).
- `supervision`: stand-ins for an engine, `royalty up` and its workers, to kill and watch.
- `influence_world`: the world the influence integration tests share.
"""
