"""TLS test fixtures shared by the broker tests: a throw-away PKI and a TLS front.

The brokers here listen in plaintext; a :class:`TlsFront` terminates TLS in front of
one (what an ``amqps://`` or Kafka SSL listener does) so the connectors' TLS settings
are tested over real handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import free_port


@dataclass(frozen=True)
class Pki:
    """A throw-away CA with a server certificate (localhost) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with ``key_password``
    key_password: str = "tb-key-pass"


def make_pki(directory: Path) -> Pki:
    """Generate the PKI with the openssl CLI (EC keys: fast)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True,
                       capture_output=True, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tb-test-ca")
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "tb-bridge", "extendedKeyUsage=clientAuth"),
    ):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        (directory / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client-enc.key")
    run("ec", "-in", "client.key", "-out", "client-enc.key", "-aes256",
        "-passout", f"pass:{pki.key_password}")
    return pki


class TlsFront:
    """A TLS listener forwarding bytes to ``127.0.0.1:upstream_port``.

    ``port`` is fixed at construction, so a Kafka broker behind it can advertise the
    front (``--advertised-listener-url tcp://localhost:<port>``) before it starts; set
    ``upstream_port`` once the broker runs. It requires a client certificate signed by
    ``pki.ca`` when ``require_client_cert``; ``clients`` holds the common names it
    verified.
    """

    def __init__(
        self, pki: Pki, upstream_port: int = 0, require_client_cert: bool = True
    ) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self._context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        if require_client_cert:
            self._context.verify_mode = ssl.CERT_REQUIRED
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.clients: list[str] = []

    async def __aenter__(self) -> TlsFront:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self._context
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        self.clients.append(str(subject.get("commonName", "")))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
