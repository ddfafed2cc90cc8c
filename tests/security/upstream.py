#!/usr/bin/env python3
"""A tiny loopback upstream for the security runs (stdlib only).

GET  /v1/big...   -> 200 with BIG_BYTES of body (for slow-read tests)
POST anything     -> reads the whole body (Content-Length or chunked), then 200 "ok"
anything else     -> 200 "ok"

Run as a script it serves until SIGTERM/SIGINT: `upstream.py PORT [BIG_BYTES]`.
"""

import http.server
import signal
import sys
import threading

BIG_BYTES = 4 * 1024 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pooled client expects
    big = BIG_BYTES

    def log_message(self, *args):  # quiet: floods would flood the log
        pass

    def _reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size + 2)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)

    def do_GET(self):
        if self.path.startswith("/v1/big"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(self.big))
            self.end_headers()
            block = b"x" * 65536
            left = self.big
            while left > 0:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
        else:
            self._reply(b"ok\n")

    do_HEAD = do_GET

    def do_POST(self):
        self._drain_body()
        self._reply(b"ok\n")

    do_PUT = do_POST


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def start(port=0, big=BIG_BYTES):
    """Starts the upstream on 127.0.0.1:port in a daemon thread; returns the server."""
    handler = type("BoundHandler", (Handler,), {"big": big})
    server = Server(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    port = int(sys.argv[1])
    big = int(sys.argv[2]) if len(sys.argv) > 2 else BIG_BYTES
    handler = type("BoundHandler", (Handler,), {"big": big})
    server = Server(("127.0.0.1", port), handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
