"""Run the model server as a child process on loopback and talk OIP v2 to it (tests, bench).

with LocalServer(model_dir) as server:                # python -m components.serve, free port
    out = server.infer(sparse, dense)                 # {"score": ..., "logit": ..., ...}
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_body(
    sparse: np.ndarray,
    dense: np.ndarray,
    task: str | None = None,
    task_version: str | None = None,
    support: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """An OIP v2 JSON request (:mod:`components.serve.protocol`); ``support`` maps
    ``support_sparse``/``support_dense``/``support_click``[/``support_conversion``] to arrays."""

    def tensor(name: str, array: np.ndarray) -> dict[str, Any]:
        datatype = "INT64" if array.dtype.kind in "iu" else "FP32"
        return {"name": name, "datatype": datatype, "shape": list(array.shape),
                "data": array.reshape(-1).tolist()}  # fmt: skip

    inputs = [tensor("sparse", sparse), tensor("dense", dense)]
    inputs += [tensor(name, array) for name, array in (support or {}).items()]
    parameters = {k: v for k, v in (("task", task), ("task_version", task_version)) if v}
    return {"inputs": inputs, **({"parameters": parameters} if parameters else {})}


def parse_response(body: dict[str, Any]) -> dict[str, Any]:
    """``score``/``logit`` as float32 arrays, ``version`` and ``adapted``."""
    out = {o["name"]: np.asarray(o["data"], dtype=np.float32) for o in body["outputs"]}
    out["version"] = body.get("model_version")
    out["adapted"] = bool((body.get("parameters") or {}).get("adapted"))
    return out


class LocalServer:
    """``python -m components.serve`` on a free loopback port, stopped on exit; its output goes
    to ``log`` (a file, readable while it runs)."""

    def __init__(
        self,
        model_dir: Path,
        log: Path,
        name: str = "metarec",
        poll_seconds: float = 0.2,
        ready_timeout_s: float = 120,
        entrypoint: Sequence[str] = (sys.executable, "-m", "components.serve"),
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        """``entrypoint``, ``env``, ``cwd``: how to start it (default: this interpreter on the
        source tree; the image-contract test passes an image's entry point and environment)."""
        self.model_dir, self.log_path, self.name = model_dir, log, name
        self.poll_seconds, self.ready_timeout_s = poll_seconds, ready_timeout_s
        self.entrypoint, self.cwd = list(entrypoint), cwd
        self.env = dict(env) if env is not None else {**os.environ, "PYTHONPATH": str(REPO)}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [*self.entrypoint, "--model_dir", str(self.model_dir), "--model_name", self.name,
                "--http_port", str(self.port), "--enable_grpc", "false", "--poll_seconds",
                str(self.poll_seconds)]  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LocalServer:
        import httpx

        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/v2/models/{self.name}/ready", timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise TimeoutError(f"the server was not ready in {self.ready_timeout_s} s:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def infer(self, sparse: np.ndarray, dense: np.ndarray, client: Any = None, **kw: Any) -> Any:
        """POST one request; the parsed response (raises on a non-200 answer)."""
        import httpx

        body = json.dumps(request_body(sparse, dense, **kw))
        post = (client or httpx).post
        r = post(f"{self.url}/v2/models/{self.name}/infer", content=body,
                 headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:2000]}")
        return parse_response(r.json())
