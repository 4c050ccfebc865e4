#!/usr/bin/env python3
"""Forwards TCP connections from LISTEN_HOST:LISTEN_PORT to TARGET_HOST:TARGET_PORT.

The TURN test runs this in the TURN server's network namespace, so that a
viewer that can reach only that namespace can still load the board's page and
POST its offer (HTTP over TCP), while every UDP packet between the viewer and
the board must go through the TURN relay. Prints "listening" once bound.
"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(listen_host, listen_port, target_host, target_port):
    async def handle(client_reader, client_writer):
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, target_writer), pipe(target_reader, client_writer))

    server = await asyncio.start_server(handle, listen_host, listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    asyncio.run(main(host, port, target, target_port))
