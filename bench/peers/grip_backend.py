#!/usr/bin/env python3
"""Tiny GRIP origin for Pushpin in scripts/bench-peers.sh.

Every request for /sub/<channel> is answered at once with an empty `text/event-stream` response that tells
Pushpin to hold the client connection open as a stream subscribed to <channel>:

    Grip-Hold: stream
    Grip-Channel: <channel>

Pushpin then relays whatever is published to <channel> through its HTTP control API
(`POST /publish/` with `{"items":[{"channel": ..., "formats": {"http-stream": {"content": ...}}}]}`).
Anything else gets 404. asyncio, stdlib only; the origin only works at connect time.

Usage: grip_backend.py PORT   (binds 127.0.0.1:PORT; prints "ready" once listening)
"""

import asyncio
import re
import sys

CHANNEL = re.compile(rb"^GET /sub/([A-Za-z0-9_.:-]{1,128})(?:\?[^ ]*)? HTTP/1\.[01]$")


def answer(request_line: bytes) -> bytes:
    match = CHANNEL.match(request_line)
    if not match:
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    channel = match.group(1)
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Grip-Hold: stream\r\n"
        b"Grip-Channel: " + channel + b"\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                break
            content_length = 0
            while True:  # headers
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    content_length = int(value.strip() or 0)
            if content_length:
                await reader.readexactly(content_length)
            writer.write(answer(request_line.rstrip(b"\r\n")))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
