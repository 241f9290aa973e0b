"""Wire types of the OpenAI-compatible API, one module per endpoint family."""
