"""Drives Alknet's /api/ws (the alknet/call protocol over a WebSocket) with `websockets`.

Usage: ws_client.py URL TOKEN. Makes a unary call, a streaming call to its end, a streaming
call aborted after its first result, and a malformed message; prints one JSON object with
what came back, by call.
"""

import asyncio
import json
import ssl
import sys
import uuid

import websockets


async def main(url: str, token: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {"frames": {}}
    async with websockets.connect(url, ssl=ctx, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        info, stats, endless = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        names = {info: "info", stats: "stats", endless: "endless"}
        for cid, op, inp in [
            (info, "/node/info", None),
            (stats, "/node/stats", {"interval_ms": 100, "count": 3}),
            (endless, "/node/stats", {"interval_ms": 100, "count": 20}),
        ]:
            await ws.send(json.dumps({"type": "call.requested", "id": cid, "payload": {"operationId": op, "input": inp}}))
        await ws.send("{not json")
        done = set()
        aborted_sent = False
        while len(done) < 3:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
            name = names.get(msg.get("id"), "other")
            out["frames"].setdefault(name, []).append(msg["type"])
            if name == "endless" and not aborted_sent and msg["type"] == "call.responded":
                aborted_sent = True
                await ws.send(json.dumps({"type": "call.aborted", "id": endless}))
            if msg["type"] in ("call.completed", "call.error", "call.aborted") and name != "other":
                done.add(name)
            if name == "info" and msg["type"] == "call.responded":
                out["fingerprint"] = msg["payload"]["output"]["fingerprint"]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
