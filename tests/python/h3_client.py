"""HTTP/3 requests to Alknet with aioquic's h3 client (PyPI).

Usage: h3_client.py HOST PORT TOKEN. Reads request lines from stdin, one JSON object each:
{"method": "GET", "path": "/healthz", "body": optional JSON, "auth": true|false, "stream": n}
(`stream`: read only the first n events of an event stream, then reset it). Prints one JSON
line per request: {"status": int, "headers": {...}, "body": str}.
"""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            state = self.waiting.get(getattr(ev, "stream_id", None))
            if state is None:
                continue
            if isinstance(ev, HeadersReceived):
                state["headers"].extend(ev.headers)
            elif isinstance(ev, DataReceived):
                state["body"] += ev.data
                state["changed"].set()
            if getattr(ev, "stream_ended", False):
                state["done"].set_result(True)
                state["changed"].set()

    async def request(self, host, method, path, headers, body):
        sid = self._quic.get_next_available_stream_id()
        hs = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", path.encode())]
        hs += [(k.encode(), v.encode()) for k, v in headers.items()]
        state = {"headers": [], "body": b"", "done": asyncio.get_running_loop().create_future(), "changed": asyncio.Event()}
        self.waiting[sid] = state
        self.h3.send_headers(sid, hs, end_stream=body is None)
        if body is not None:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        return sid, state


async def main(host, port, token):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        for line in sys.stdin:
            if not line.strip():
                continue
            r = json.loads(line)
            headers = {}
            if r.get("auth", True):
                headers["authorization"] = f"Bearer {token}"
            body = None
            if "body" in r:
                body = json.dumps(r["body"]).encode()
                headers["content-type"] = "application/json"
            sid, st = await client.request(f"{host}:{port}", r.get("method", "GET"), r["path"], headers, body)
            if "stream" in r:
                while st["body"].count(b"\n\n") < r["stream"]:
                    st["changed"].clear()
                    await asyncio.wait_for(st["changed"].wait(), 20)
                client._quic.reset_stream(sid, 0x10C)
                client.transmit()
            else:
                await asyncio.wait_for(st["done"], 20)
            hdrs = {k.decode(): v.decode() for k, v in st["headers"]}
            print(json.dumps({"status": int(hdrs.get(":status", "0")), "headers": hdrs, "body": st["body"].decode(errors="replace")}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
