"""Shared fixtures: test layout is unit (no services), integration (real PostgreSQL),
e2e (real vLLM CPU engine, official OpenAI SDK)."""
