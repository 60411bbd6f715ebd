"""Reading a provider's HTTP answer without trusting its size."""

from __future__ import annotations

import aiohttp

CHUNK = 65_536


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, read in chunks up to ``limit`` bytes; None when it is larger (announced by
    Content-Length or found while reading): the caller counts it and fails the request."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
