"""Fast delivery sinks for the benchmark: an SMTP server and an SMS webhook that only count.

    python -m bench.sinks [--smtp-port 0] [--http-port 0]

One process, one event loop, two servers on 127.0.0.1:

- SMTP (aiosmtpd): a real SMTP dialogue, but the handler only counts ``DATA`` and answers
  ``250``; no parsing, no saving. (``scripts/mail_catcher.py`` parses every message into an
  ``EmailMessage``: right for development, but slower than the service it would measure.)
- HTTP (aiohttp): ``POST /sms`` reads the body, counts and answers ``200 {}``, like an SMS
  provider's webhook that accepted the message. ``GET /stats`` answers the counts as JSON.

The first line on stdout is ``{"smtp": <port>, "http": <port>}`` once both listen; on SIGTERM
or SIGINT the process prints the final counts as one JSON line and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP

from devtools.support import OffersPipelining


class Counter(OffersPipelining):
    def __init__(self) -> None:
        self.mails = 0
        self.sms = 0

    # aiosmtpd calls handle_DATA once per message, after the whole body has arrived.
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails += 1
        return "250 OK"

    def stats(self) -> dict[str, int]:
        return {"mails": self.mails, "sms": self.sms}


async def serve(smtp_port: int, http_port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    # A fixed hostname: without one aiosmtpd calls socket.getfqdn() on every connection.
    smtp = await loop.create_server(
        lambda: SMTP(counter, hostname="bench-sink", ident="bench-sink"),
        "127.0.0.1",
        smtp_port,
    )

    async def sms(request: web.Request) -> web.Response:
        await request.read()
        counter.sms += 1
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counter.stats())

    app = web.Application()
    app.router.add_post("/sms", sms)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", http_port))
    await web.SockSite(runner, sock).start()
    ports = {"smtp": smtp.sockets[0].getsockname()[1], "http": sock.getsockname()[1]}
    print(json.dumps(ports), flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    smtp.close()
    await runner.cleanup()
    print(json.dumps(counter.stats()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.smtp_port, args.http_port))
    sys.exit(0)


if __name__ == "__main__":
    main()
