"""`royalty up` on embedded defaults: private PostgreSQL from the pgserver wheel and a
supervised vLLM engine. Engine death gives a clean 503, then the supervisor brings it back."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest
from support.procs import Gateway, free_port

pytestmark = pytest.mark.e2e


def _engine_pid(gateway_pid: int) -> int:
    for child in psutil.Process(gateway_pid).children(recursive=False):
        if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no vLLM child found")


def test_embedded_stack_survives_engine_death(demo_models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["ROYALTY_ENGINE_PORT"] = str(free_port())
    gw = Gateway(tmp_path / "home", ["--models-dir", str(demo_models.root)], env=env)
    gw.env = env
    gw.start(timeout_s=400)
    try:
        import subprocess

        from support.procs import ROYALTY

        key = subprocess.run([ROYALTY, "keys", "create", "--account", "embedded",
                              "--data-dir", str(gw.data_dir)], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        subprocess.run([ROYALTY, "credits", "add", "--account", "embedded", "--amount", "10",
                        "--data-dir", str(gw.data_dir)], env=env, check=True,
                       capture_output=True, text=True)  # fmt: skip
        h = {"Authorization": f"Bearer {key}"}
        body = {"model": "astronomy", "prompt": "The planet", "max_tokens": 4}
        url = gw.base_url + "/v1/completions"
        assert httpx.post(url, json=body, headers=h, timeout=60).status_code == 200

        engine = _engine_pid(gw.proc.pid)  # type: ignore[union-attr]
        os.killpg(engine, signal.SIGKILL)
        time.sleep(0.5)
        r = httpx.post(url, json=body, headers=h, timeout=60)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "server_error" and "retry-after" in r.headers

        deadline = time.monotonic() + 300
        while httpx.get(gw.base_url + "/healthz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, gw.log()[-3000:]
            time.sleep(1)
        assert _engine_pid(gw.proc.pid) != engine  # type: ignore[union-attr]
        r = httpx.post(url, json=body, headers=h, timeout=60)  # adapter reloaded after restart
        assert r.status_code == 200, r.text
    finally:
        code = gw.stop()
    assert code == 0, gw.log()[-3000:]
