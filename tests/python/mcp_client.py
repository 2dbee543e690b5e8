"""Drives Alknet's MCP endpoint with the official MCP SDK's streamable-HTTP client.

Usage: mcp_client.py URL TOKEN. Prints one JSON object: the negotiated protocol version, the
tool names seen over every tools/list page, the result of a unary call, the progress
notifications and result of a streaming call, and the error of a forbidden tool.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
import mcp_types as types
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str) -> None:
    out: dict = {}
    client = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        verify=False,
        timeout=httpx2.Timeout(30.0, read=60.0),
    )
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["protocol"] = init.protocol_version
                out["server"] = init.server_info.name
                names = []
                cursor = None
                pages = 0
                while True:
                    page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                    pages += 1
                    names += [t.name for t in page.tools]
                    out.setdefault("schemas", {}).update({t.name: t.input_schema for t in page.tools})
                    cursor = page.next_cursor
                    if not cursor:
                        break
                out["tools"] = names
                out["pages"] = pages
                info = await session.call_tool("node__info", {})
                out["info"] = {
                    "isError": info.is_error,
                    "structured": info.structured_content,
                    "text": [c.text for c in info.content],
                }
                progress = []

                async def on_progress(p, total, message):
                    progress.append({"progress": p, "message": message})

                stats = await session.call_tool(
                    "node__stats",
                    {"interval_ms": 100, "count": 3},
                    progress_callback=on_progress,
                )
                out["stats"] = {
                    "isError": stats.is_error,
                    "items": [json.loads(c.text) for c in stats.content],
                    "progress": progress,
                }
                bad = await session.call_tool("node__stats", {"interval_ms": 5})
                out["invalid"] = {"isError": bad.is_error, "text": [c.text for c in bad.content]}
                try:
                    await session.call_tool("node__sessions", {})
                    out["forbidden"] = "called"
                except Exception as e:  # the tool is not listed for this caller
                    out["forbidden"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
