"""A real S3 API on loopback: moto's server, in a thread of the test process."""

from __future__ import annotations

import contextlib
import math
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from moto.server import ThreadedMotoServer

from .server import free_port


@dataclass
class S3:
    endpoint: str
    server: ThreadedMotoServer

    @property
    def options(self) -> dict[str, Any]:
        """What a user passes as storage options: the only place the credentials are."""
        return {"key": "daskimg-test-key", "secret": "daskimg-test-secret", "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": "eu-west-1"}}

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Meanwhile the server checks credentials, as S3 does (it accepts any by default)."""
        self._authenticate_after(0)
        try:
            yield
        finally:
            self._authenticate_after(math.inf)

    def _authenticate_after(self, requests: float) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=str(requests).encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)


def start() -> S3:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3(f"http://127.0.0.1:{port}", server)
