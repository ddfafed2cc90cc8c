#!/usr/bin/env python3
"""A stunnel-like client shim: plain TCP on loopback in, mTLS with a client certificate out.

slowhttptest and h2load cannot present a client certificate, so they talk plain HTTP to this shim
and it opens one TLS connection to the gateway per accepted connection, presenting the partner's
certificate. Unlike `socat ... OPENSSL:` (1.7.4 has no ALPN option) it sets ALPN, which is how the
gateway chooses HTTP/2: with `--alpn h2`, h2load's h2c prior-knowledge stream passes through
unchanged as h2 over TLS.

    mtls_shim.py --listen PORT --connect HOST:PORT --cert C --key K --ca CA [--alpn h2]

Serves until SIGTERM/SIGINT. A connection the gateway closes is closed towards the client too,
so the attack tools see the gateway's timeouts.
"""

import argparse
import asyncio
import signal
import ssl
import sys


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - already gone
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--connect", required=True, help="HOST:PORT of the gateway")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--alpn", default="http/1.1")
    ap.add_argument("--server-name", default="localhost")
    args = ap.parse_args()
    host, port = args.connect.rsplit(":", 1)

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols([args.alpn])

    async def handle(client_r, client_w):
        try:
            gw_r, gw_w = await asyncio.wait_for(
                asyncio.open_connection(
                    host, int(port), ssl=ctx, server_hostname=args.server_name
                ),
                timeout=10,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            client_w.close()
            return
        await asyncio.gather(pump(client_r, gw_w), pump(gw_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"shim 127.0.0.1:{args.listen} -> {args.connect} alpn={args.alpn}", flush=True)
    async with server:
        await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
