"""``serve``: a static web site from a directory, over HTTP/1.1 with keep-alive, from a daemon thread.

For offline examples (``topologies/crawl.py`` serves the bundled
``topologies/site``), tests and benchmarks; not for the Internet: no TLS,
no compression, no ranges or caching headers, every file read whole. Each
server runs ``aiohttp.web`` on an event loop of its own in a thread of its
own, so hundreds of open connections and of delayed responses cost no
threads. It answers GET and HEAD (other methods get 405):

- ``/dir/`` serves ``dir/index.html``, or 404 if there is none (no listings);
- ``/dir`` redirects (301) to ``/dir/``, keeping the query, as most servers do;
- a missing file is a 404, as is a path that leads out of the directory
  (through ``..`` or a symbolic link);
- ``Content-Type`` comes from the extension (``mimetypes``), with
  ``charset=utf-8`` for ``text/*``: the text files must be UTF-8.

It counts what it serves (``requests``, ``paths``, ``max_in_flight``), so a
test can assert that a crawler fetched each page once, or how many requests
it had open at a time.

>>> import tempfile, urllib.request
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as directory, serve(directory) as server:
...     _ = (Path(directory) / "index.html").write_text("<title>Vale</title>")
...     with urllib.request.urlopen(server.url) as response:
...         print(response.status, response.headers["Content-Type"], response.read())
...     print(server.requests, server.paths)
200 text/html; charset=utf-8 b'<title>Vale</title>'
1 Counter({'/': 1})
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from aiohttp import web

BACKLOG = 1024
"""Connections the listening socket queues before accepting them (a burst of hundreds fits)."""

SHUTDOWN_TIMEOUT_S = 1.0
"""How long ``Server.close()`` lets the requests being handled finish before it drops them."""


def serve(directory: str | Path, *, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0) -> Server:
    """Serve ``directory`` at ``http://host:port/`` from a daemon thread until ``close()``.

    ``port=0`` picks a free port (see ``Server.port``); ``host="0.0.0.0"``
    serves on every interface. ``delay_s`` delays every response by that
    long without holding up the others: 100 requests at once with
    ``delay_s=0.05`` are all answered after about 50 ms. Raises
    ``NotADirectoryError`` if ``directory`` is not a directory and
    ``OSError`` if the address cannot be bound (e.g. the port is in use).
    """
    if delay_s < 0:
        raise ValueError(f"delay_s must be 0 or more, got {delay_s!r}")
    root = Path(directory).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"cannot serve {str(directory)!r}: not a directory")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
    try:
        return Server(root, listener, host, delay_s)
    except BaseException:
        listener.close()
        raise


class Server:
    """A static site being served; made by ``serve``, stopped by ``close()`` or at the end of a ``with`` block.

    The counts are read from any thread; each covers the GET and HEAD
    requests since the server started.
    """

    def __init__(self, directory: Path, listener: socket.socket, host: str, delay_s: float) -> None:
        self.directory = directory
        """The directory served, made absolute."""
        self.delay_s = delay_s
        """The delay added to every response, in seconds."""
        self.port: int = listener.getsockname()[1]
        """The port it listens on (the one picked when ``serve`` was given ``port=0``)."""
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"
        """The site's base URL, ``"http://host:port/"``, with the host as given to ``serve``."""
        self._lock = threading.Lock()
        self._requests = 0
        self._paths: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._is_closed = False
        self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        self._released.set()
        self._runner = web.AppRunner(self._application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        try:
            self._loop.run_until_complete(self._start(listener))
        except BaseException:
            self._loop.close()
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"site-{self.port}", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        """How many requests it has received."""
        with self._lock:
            return self._requests

    @property
    def paths(self) -> Counter[str]:
        """How many requests it has received for each path, as sent (percent-encoded, without the query); a copy."""
        with self._lock:
            return Counter(self._paths)

    @property
    def in_flight(self) -> int:
        """How many requests it is handling now (received, not yet answered)."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests it has handled at once."""
        with self._lock:
            return self._max_in_flight

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold back every response, after its delay, until the block ends.

        For tests that need requests in flight at a known moment: send them,
        wait until ``in_flight`` counts them, check, and leave the block.
        ``close()`` ends a hold too.

        >>> import tempfile, threading, time, urllib.request
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as directory, serve(directory) as server:
        ...     _ = (Path(directory) / "index.html").write_text("<title>Vale</title>")
        ...     with server.hold():
        ...         client = threading.Thread(target=lambda: urllib.request.urlopen(server.url).close())
        ...         client.start()
        ...         while server.in_flight < 1:
        ...             time.sleep(0.01)
        ...     client.join()
        ...     print(server.max_in_flight, server.in_flight)
        1 0
        """
        self._set_released(False)
        try:
            yield
        finally:
            self._set_released(True)

    def close(self) -> None:
        """Stop serving and close the socket and every connection; does nothing the second time.

        Requests being handled get ``SHUTDOWN_TIMEOUT_S`` to finish (held ones
        are let go), then they are dropped.
        """
        self._set_released(True)
        with self._lock:
            if self._is_closed:
                return
            self._is_closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _application(self) -> web.Application:
        application = web.Application()
        application.router.add_get("/{path:.*}", self._handle)  # HEAD too
        return application

    async def _start(self, listener: socket.socket) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()

    def _set_released(self, is_released: bool) -> None:
        # Queued to the loop before returning, so it comes before any request sent after it.
        with self._lock:
            if not self._is_closed:
                self._loop.call_soon_threadsafe(self._released.set if is_released else self._released.clear)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._requests += 1
            self._paths[request.rel_url.raw_path] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            await self._released.wait()
            return self._respond(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _respond(self, request: web.Request) -> web.StreamResponse:
        try:
            path = (self.directory / request.path.lstrip("/")).resolve()
        except (OSError, ValueError):  # a NUL byte, a symbolic link loop
            return web.Response(status=404, text="404 Not Found")
        if not path.is_relative_to(self.directory):
            return web.Response(status=404, text="404 Not Found")
        if path.is_dir():
            if not request.path.endswith("/"):
                location = request.rel_url.raw_path + "/"
                if request.rel_url.raw_query_string:
                    location += "?" + request.rel_url.raw_query_string
                return web.Response(status=301, headers={"Location": location})
            path = path / "index.html"
        if not path.is_file():
            return web.Response(status=404, text="404 Not Found")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        charset = "utf-8" if content_type.startswith("text/") else None
        return web.Response(body=path.read_bytes(), content_type=content_type, charset=charset)
