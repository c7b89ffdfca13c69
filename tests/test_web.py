"""The web view's server: what a viewer receives, tokens, and viewers that fall behind."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from stream.errors import UserError
from stream.frames import PerceivedFrame, PlayerView, Turn, VideoFrame
from stream.view.web import (
    END,
    UNAUTHORISED,
    VIEWER_QUEUE,
    Hub,
    WebServer,
    WebView,
    parse_address,
)


@pytest.mark.parametrize(("text", "address"), [
    ("8080", ("127.0.0.1", 8080)), (":8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9000", ("::1", 9000)),
])
def test_web_addresses_default_to_this_machine_only(text: str,
                                                     address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["http", "host:", "70000", "x:-1"])
def test_bad_web_addresses_are_one_line_errors(text: str) -> None:
    with pytest.raises(UserError, match=rf"--web {text}: give a port"):
        parse_address(text)


def _frame(pts: float) -> PerceivedFrame:
    view = PlayerView("P1", 1, (10.0, 10.0, 60.0, 80.0), True, 0.0, 0.0, 1.0, 0.8)
    return PerceivedFrame(pts=pts, frame=VideoFrame(pts=pts, image=np.zeros((48, 64, 3),
                                                                              np.uint8)),
                          players=(view,), voiced=True, speaker="P1", confidence=0.8)


def _turn(index: int) -> Turn:
    return Turn(pts=index + 0.5, index=index, start=float(index), end=index + 0.1,
                text=f"line {index}", known_at=index + 0.5)


async def _receive(socket: aiohttp.ClientWebSocketResponse, until: str,
                   limit: int = 5000) -> tuple[list[dict], list[bytes]]:
    texts, pictures = [], []
    for _ in range(limit):
        message = await asyncio.wait_for(socket.receive(), 10)
        if message.type == aiohttp.WSMsgType.BINARY:
            pictures.append(message.data)
            continue
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(message.data)
        texts.append(event)
        if until in message.data:
            break
    return texts, pictures


async def test_a_viewer_gets_history_then_live_events_and_pictures() -> None:
    view = WebView("127.0.0.1:0", "s1", {"P1": "Ann"})
    await view.start()
    try:
        await view.process(_turn(0))
        async with aiohttp.ClientSession() as client:
            page = await client.get(view.server.url)
            assert page.status == 200 and "<canvas" in await page.text()
            async with client.ws_connect(view.server.url + "ws") as socket:
                texts, _ = await _receive(socket, "line 0")
                assert texts[0] == {"type": "hello", "session": "s1", "names": {"P1": "Ann"},
                                    "pictures": True}
                assert texts[1]["schema"].startswith("socialstream.turn")
                await view.process(_frame(1.0))
                await view.process(_turn(1))
                texts, _ = await _receive(socket, "socialstream.speaker")
                seen = [t.get("schema", "") for t in texts]
                assert any(s.startswith("socialstream.turn") for s in seen)
                speaker = texts[-1]
                assert speaker["speaker"] == "P1" and (speaker["width"], speaker["height"]) \
                    == (64, 48)
                message = await asyncio.wait_for(socket.receive(), 10)
                assert message.type == aiohttp.WSMsgType.BINARY
                assert message.data[:2] == b"\xff\xd8", "a JPEG follows its speaker event"
                await view.stop()
                texts, _ = await _receive(socket, END)
                assert texts[-1] == json.loads(END)
    finally:
        await view.server.stop()


async def test_a_token_guards_the_socket_and_stays_out_of_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed URL carries the token after '#', which no request line holds; the page
    (no data in it) needs none, the socket does: as its first message (the page's way)
    or a Bearer header. A wrong one, a non-ASCII one (a 500 before) or none closes it."""
    monkeypatch.setenv("SOCIALSTREAM_WEB_TOKEN", "s3cret")
    server = WebServer(Hub("s"), "127.0.0.1", 0)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.bound[1]}"
        assert server.url == base + "/#token=s3cret"
        async with aiohttp.ClientSession() as client:
            assert (await client.get(base + "/")).status == 200
            for first in ({"type": "auth", "token": "wrong"}, {"type": "auth", "token": "é"},
                          {"type": "hello"}):
                async with client.ws_connect(base + "/ws") as socket:
                    await socket.send_json(first)
                    message = await asyncio.wait_for(socket.receive(), 10)
                    assert message.type == aiohttp.WSMsgType.CLOSE
                    assert message.data == UNAUTHORISED
            async with client.ws_connect(base + "/ws") as socket:
                await socket.send_json({"type": "auth", "token": "s3cret"})
                texts, _ = await _receive(socket, "hello")
                assert texts[0]["type"] == "hello"
            async with client.ws_connect(base + "/ws",
                                         headers={"Authorization": "Bearer s3cret"}) as socket:
                texts, _ = await _receive(socket, "hello")
                assert texts[0]["type"] == "hello"
    finally:
        await server.stop()


async def test_only_this_page_may_open_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of another site open in the operator's browser (its Origin), or another
    site's name rebound to 127.0.0.1 (its Host), is refused; so is a viewer beyond the
    cap (301 were held)."""
    monkeypatch.setattr("stream.view.web.MAX_VIEWERS", 2)
    server = WebServer(Hub("s", pictures=False), "127.0.0.1", 0)
    await server.start()
    try:
        port = server.bound[1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as client:
            for headers in ({"Origin": "http://evil.example"},
                            {"Origin": f"http://evil.example:{port}",
                             "Host": f"evil.example:{port}"}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(base + "/ws", headers=headers)
                assert refused.value.status == 403
            same = {"Origin": base}
            async with client.ws_connect(base + "/ws", headers=same) as one, \
                    client.ws_connect(f"http://localhost:{port}/ws") as two:
                for socket in (one, two):
                    assert (await _receive(socket, "hello"))[0][0]["type"] == "hello"
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(base + "/ws")
                assert refused.value.status == 503
    finally:
        await server.stop()


async def test_an_address_this_machine_lacks_says_so() -> None:
    server = WebServer(Hub("s"), "192.0.2.1", 0)  # TEST-NET-1: nobody's
    with pytest.raises(UserError, match=r"192.0.2.1:0: cannot listen .*choose an address of "
                                        "this machine"):
        await server.start()


async def test_a_viewer_that_falls_behind_is_resynced_and_never_waited_for() -> None:
    hub = Hub("s", pictures=False)
    server = WebServer(hub, "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(f"http://127.0.0.1:{server.bound[1]}/ws") as socket:
            await _receive(socket, "hello")
            # The event loop does not run between these calls, so the viewer's sender
            # cannot keep up: publishing must neither wait nor fail.
            for i in range(VIEWER_QUEUE * 3):
                hub.publish({"schema": "socialstream.turn/6", "turn": i, "text": f"t{i}"})
            assert hub.resyncs == 1
            texts, _ = await _receive(socket, f'"t{VIEWER_QUEUE * 3 - 1}"')
            # It gets a fresh snapshot (hello, then everything so far) and is whole again.
            hello = max(i for i, t in enumerate(texts) if t.get("type") == "hello")
            assert [t["turn"] for t in texts[hello + 1:]] == list(range(VIEWER_QUEUE * 3))
    finally:
        await server.stop()


async def test_a_port_in_use_is_a_one_line_error() -> None:
    first = WebServer(Hub("s"), "127.0.0.1", 0)
    await first.start()
    try:
        second = WebServer(Hub("s"), "127.0.0.1", first.bound[1])
        with pytest.raises(UserError, match=r"cannot listen .*choose another port"):
            await second.start()
    finally:
        await first.stop()


async def test_several_viewers_each_get_every_event() -> None:
    view = WebView("127.0.0.1:0", "s")
    await view.start()
    try:
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(view.server.url + "ws") as first, \
                client.ws_connect(view.server.url + "ws?frames=0") as second:
            for socket in (first, second):
                await _receive(socket, "hello")
            for i in range(3):
                await view.process(_turn(i))
                await view.process(_frame(i + 0.6))
            await asyncio.sleep(0.3)  # the encoder's turn
            await view.stop()
            first_texts, first_pictures = await _receive(first, END)
            second_texts, second_pictures = await _receive(second, END)
            for texts in (first_texts, second_texts):
                assert [t["text"] for t in texts if "text" in t] == ["line 0", "line 1",
                                                                     "line 2"]
            # Asked for no pictures, the second viewer gets none.
            assert len(first_pictures) >= 1 and second_pictures == []
    finally:
        await view.server.stop()


async def test_sockets_waiting_to_send_their_token_count_against_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a token, sockets that never send it were held outside the cap (300 at once);
    a Host that is not an address was a 500."""
    monkeypatch.setenv("SOCIALSTREAM_WEB_TOKEN", "s3cret")
    monkeypatch.setattr("stream.view.web.MAX_VIEWERS", 2)
    server = WebServer(Hub("s", pictures=False), "127.0.0.1", 0)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.bound[1]}"
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(base + "/ws"), client.ws_connect(base + "/ws"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect(base + "/ws")
            assert refused.value.status == 503
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect(base + "/ws", headers={"Host": "localhost:99999"})
            assert refused.value.status == 403
    finally:
        await server.stop()
