"""The endpoint's turns for every route but the kill's (``controller.lane``, ``controller.api.kill_lane``),
on the endpoint's own middleware served over loopback: a flood waits in bounds and is answered 503, a
kill never waits, and a body that never comes gives its turn back (408)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI, Request

from controller import api as endpoint
from controller.bodies import read_body
from controller.lane import Lane


async def served(app: FastAPI) -> tuple[str, uvicorn.Server, asyncio.Task]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, task


@pytest.fixture
async def lane_app():
    """The endpoint's ``kill_lane`` over a route that holds its turn until released, a sign-in that reads
    its body, and a kill; one turn, one waiting place, a wait of 2 s."""
    release = asyncio.Event()
    held = asyncio.Event()
    app = FastAPI()
    app.middleware("http")(endpoint.kill_lane)

    @app.get("/status")
    async def status() -> dict:
        held.set()
        await release.wait()
        return {"ok": True}

    @app.post("/console/signin")
    async def signin(request: Request) -> dict:
        await read_body(request, 4096, form=True)
        return {"ok": True}

    @app.post("/kill")
    async def kill() -> dict:
        return {"killed": True}

    before = endpoint._Served.others, endpoint._Served.signins
    endpoint._Served.others = Lane(at_once=1, queue=1, wait_s=2.0)
    endpoint._Served.signins = Lane("the sign-in", at_once=1, queue=1, wait_s=0.5)
    url, server, task = await served(app)
    try:
        yield url, held, release
    finally:
        release.set()
        server.should_exit = True
        await task
        endpoint._Served.others, endpoint._Served.signins = before


async def test_a_flood_is_answered_503_in_bounds_and_a_kill_never_waits(lane_app, monkeypatch, caplog):
    import controller.lane as lane

    monkeypatch.setattr(lane, "SAY_EVERY_S", 0.2)
    url, held, release = lane_app
    async with aiohttp.ClientSession() as http:
        holder = asyncio.create_task(http.get(f"{url}/status"))
        await held.wait()   # the one turn taken
        waiting = asyncio.create_task(http.get(f"{url}/status"))
        while endpoint._Served.others.waiting < 1:
            await asyncio.sleep(0.01)
        for _ in range(2):
            async with http.get(f"{url}/status") as r:   # the waiting place taken too: at once
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert "flooded" in (await r.json())["detail"]
        async with http.post(f"{url}/kill") as r:
            assert r.status == 200
        async with await waiting as r:   # waited its 2 s, no turn
            assert r.status == 503 and "no turn of the endpoint within 2 s" in (await r.json())["detail"]
        release.set()
        async with await holder as r:
            assert r.status == 200
        async with http.get(f"{url}/status") as r:   # the turn given back
            assert r.status == 200
    assert endpoint._Served.others.turned_away == 3
    # the first said at once, the second (the same instant) in the line after 0.2 s: said only at the next
    # 503 before, a burst of 1,000 was said as 1 and the rest maybe a day later
    said = [r.getMessage() for r in caplog.records if "turned away" in r.getMessage()]
    assert said[0].startswith("a request turned away (503): the endpoint is flooded")
    assert said[1].startswith("1 more requests turned away (503) in 0.2 s; the last: the endpoint is flooded")
    assert said[2].startswith("a request turned away (503): no turn of the endpoint within 2 s")


async def test_a_body_that_never_comes_is_a_408_and_gives_its_turn_back(lane_app, monkeypatch):
    """A sign-in that sends its headers and 3 of its 20 bytes held its turn for good (no deadline on the
    body): 64 of them held every turn of the endpoint. The sign-in has a lane of its own: while one
    stalls, the other routes are served."""
    import controller.bodies as bodies

    monkeypatch.setattr(bodies, "BODY_WAIT_S", 1.0)
    url, held, release = lane_app
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /console/signin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 20\r\n\r\ntok")
    await writer.drain()
    while endpoint._Served.signins._turns.locked() is False:   # the sign-in's one turn taken
        await asyncio.sleep(0.01)
    release.set()
    async with aiohttp.ClientSession() as http, http.get(f"{url}/status") as r:
        assert r.status == 200   # not behind the stalled sign-in
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    body = await reader.read(300)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"did not arrive within 1 s (3 bytes came)" in body
    async with aiohttp.ClientSession() as http, http.post(f"{url}/console/signin", data="token=x",
                                                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200   # the turn given back


def test_serves_own_hints_are_never_a_clients_to_give():
    """``x-request-disconnect-disabled: ?1`` kept a request in the replica after its client left (a flood
    for free); ``x-request-timeout-seconds`` set its timeout. Both dropped; a safe request id kept."""
    from controller.proxy_guard import guarded_headers

    headers = [(b"X-Request-Disconnect-Disabled", b"?1"), (b"x-request-timeout-seconds", b"0"),
               (b"x-request-id", b"ok-1"), (b"x-request-id", b"not\tsafe"), (b"accept", b"*/*")]
    assert guarded_headers(headers) == [(b"x-request-id", b"ok-1"), (b"accept", b"*/*")]
