"""sse-starlette behind the benchmark's common API, served by uvicorn.

An in-process broadcast: one unbounded ``asyncio.Queue`` per stream, filled by
``POST /publish`` (the hub's JSON body: one object or a batch array) with a
``ServerSentEvent`` per event; each stream is an ``EventSourceResponse`` over
an async generator reading its queue — the usual way to build a broadcast on
sse-starlette. The generator's first item is a comment so that clients see
the stream open at once. Event ids are a per-process counter.

Run: uvicorn starlette_peer:app --host 127.0.0.1 --port PORT
"""

import asyncio
import json

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Broadcast:
    def __init__(self) -> None:
        self.channels: dict[str, set[asyncio.Queue]] = {}
        self.last_id = 0

    def subscribe(self, channel: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.channels.setdefault(channel, set()).add(queue)
        return queue

    def unsubscribe(self, channel: str, queue: asyncio.Queue) -> None:
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self.channels[channel]

    def publish(self, channel: str, data: object, event: str | None) -> str:
        self.last_id += 1
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        message = ServerSentEvent(data=text, event=event, id=str(self.last_id))
        for queue in self.channels.get(channel, ()):
            queue.put_nowait(message)
        return str(self.last_id)


broadcast = Broadcast()


async def publish(request: Request) -> JSONResponse:
    try:
        payload = await request.json()
    except ValueError:
        return JSONResponse({"error": "body is not valid JSON"}, status_code=400)
    items = payload if isinstance(payload, list) else [payload]
    ids = [
        broadcast.publish(item.get("channel") or "default", item["data"], item.get("event"))
        for item in items
    ]
    body = {"ids": ids} if isinstance(payload, list) else {"id": ids[0]}
    return JSONResponse(body, status_code=202)


async def stream(request: Request) -> EventSourceResponse:
    channel = request.query_params.get("channel") or "default"
    queue = broadcast.subscribe(channel)

    async def events():
        try:
            yield ServerSentEvent(comment="open")
            while True:
                yield await queue.get()
        finally:
            broadcast.unsubscribe(channel, queue)

    return EventSourceResponse(events())


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/publish", publish, methods=["POST"]),
        Route("/stream", stream),
        Route("/healthz", healthz),
    ]
)
