"""Serving one OpenAI request: resolve the model, admit it, run it on an engine, normalise the
answer, and capture its usage durably before the last byte leaves.

Non-streaming responses are returned only after the usage record is durable; streams write it
before `data: [DONE]`. A stream the client abandons records the tokens generated so far.

Fail closed: admission refuses a request (503) while usage cannot be recorded
(`UsageSink.health`), and everything about the record that can fail (the prompt digest) is
computed at admission, before the engine is called. A stream counts as answered (`ok`) only
once its record is durable; if recording fails after output went out, the stream ends with an
error event instead of `[DONE]` and the record stays held by the sink, which retries it.

Modules:

- `service`: `InferenceService`, the orchestration of one call or stream.
- `context`: `CallContext`, one request's state in one value; `Output`; `CompletedResponse`.
- `endpoints`: one `EndpointSpec` per endpoint, the only place that knows chat from
  completions; the engine's request body.
- `admission`: usage health, prompt digest, model, token cap, rate limit, credit.
- `relay`: engine stream chunks to the client's SSE frames.
- `recording`: the one usage record per request, and what follows it.

Retrying on another engine lives beside the engine pool (`serving.failover`); what a client is
told for each exception, in the gateway's one error table (`gateway.error_table`).
"""

from gateway.inference.context import (
    UNKNOWN_MODEL,
    CallContext,
    CompletedResponse,
    Output,
    ResponseObserver,
)
from gateway.inference.endpoints import ENDPOINTS, EndpointSpec, Request, request_prompt
from gateway.inference.service import Attributor, InferenceService

__all__ = [
    "ENDPOINTS",
    "UNKNOWN_MODEL",
    "Attributor",
    "CallContext",
    "CompletedResponse",
    "EndpointSpec",
    "InferenceService",
    "Output",
    "Request",
    "ResponseObserver",
    "request_prompt",
]
