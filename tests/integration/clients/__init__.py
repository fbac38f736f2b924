"""Other real SSE clients against the real hub: Node's ``eventsource``, Python's ``httpx-sse``."""
