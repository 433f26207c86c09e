"""The KServe model server: a ``kserve.Model`` over :class:`components.serve.host.ModelHost`.

    python -m components.serve --model_dir /mnt/models --model_name metarec --http_port 8080

``--model_dir`` is a model directory of the registry (``<models>/<name>``: the server serves its
``CHAMPION`` and swaps to each newly promoted version, polled every ``--poll_seconds``) or one
version directory (served as is). KServe's own options (``--http_port``, ``--grpc_port``,
``--enable_grpc``, ``--workers``, ...) apply; requests and responses: :mod:`components.serve.protocol`.

The process exits with status 2 and a message naming the file when the model cannot be served at
start (a tampered or incomplete export, a broken delta chain, no champion): it never serves an
export that the scorer would refuse. Later, a promoted version that cannot be loaded is not
swapped in (logged; the current one goes on serving).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.model_server import parser as kserve_parser

from components.serve.host import ModelHost, RequestError
from components.serve.protocol import decode, encode, metadata_types

log = logging.getLogger(__name__)


class MetarecModel(kserve.Model):
    """Scores OIP v2 requests with the served export (see :mod:`components.serve.protocol`)."""

    def __init__(self, name: str, host: ModelHost, poll_seconds: float) -> None:
        super().__init__(name)
        self.host = host
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()

    def load(self) -> bool:
        self.host.start()
        if self.host.follows_champion and self.poll_seconds > 0:
            self.host.watch(self.poll_seconds, self._stop)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self._stop.set()
        super().stop()

    def _layout(self) -> tuple[int, int, bool]:
        served = self.host.current
        assert served is not None
        layout = served.model.layout
        return layout.sparse_width, layout.dense_width, bool(served.model.output_shape)

    def get_input_types(self) -> list[dict]:
        return metadata_types(*self._layout())[0]

    def get_output_types(self) -> list[dict]:
        return metadata_types(*self._layout())[1]

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            request = decode(payload)
            # scoring is torch work: off the event loop, so requests overlap and a swap never waits
            result = await asyncio.to_thread(self.host.score, request)
        except RequestError as e:
            raise InvalidInput(str(e)) from None
        return encode(result, self.name, getattr(payload, "id", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.serve", parents=[kserve_parser], description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--model_dir", required=True,
                        help="a model directory (serves its CHAMPION) or one version directory")  # fmt: skip
    parser.add_argument("--poll_seconds", type=float, default=10.0,
                        help="how often to look for a newly promoted champion (0: never)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    from trainer.exported.artifact import ExportError

    args = build_parser().parse_args(argv)
    if not logging.getLogger("components").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("components").addHandler(handler)
        logging.getLogger("components").setLevel(logging.INFO)
    model = MetarecModel(args.model_name, ModelHost(args.model_dir), args.poll_seconds)
    try:
        model.load()
    except (ExportError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: cannot serve {args.model_dir}: {e}\n")
        return 2
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=1,  # one process holds the model and its hot swap
    )
    server.start([model])
    return 0
