"""The web server's access log: one JSON object per request on standard output.

granian can write it, but through Python's ``logging`` (a LogRecord, a handler lock, a
``%``-format, a flush) plus a ``strftime`` per request: ~0.3 ms of a request's CPU on this
project's 2-core benchmark machine, a fifth of a single predict's (bench/README.md, "Single
predict"). This WSGI middleware writes the same line with orjson and one ``os.write``, and
escapes the path properly (granian's ``%``-format wrote a ``"`` in a path into the JSON
as it came). The timing is granian's: from the moment a request thread calls the app until
the app returns its answer (a streamed body, such as an export, until its last byte).

The path is logged without its query string: nothing a client puts in a URL query reaches
the logs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AccessLog:
    def __init__(self, app: WSGIApp, fd: int = 1) -> None:
        self.app = app
        self.fd = fd
        self._second = -1
        self._stamp = ""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        status: list[int] = [500]

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(code[:3])
            return start_response(code, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self.write(environ, 500, started)
            raise
        if isinstance(body, list):
            self.write(environ, status[0], started)
            return body
        return _LoggedWhenClosed(body, lambda: self.write(environ, status[0], started))

    def write(self, environ: dict[str, Any], status: int, started: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # one strftime a second, not one a request
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(second))
            self._second = second
        line = orjson.dumps(
            {
                "remote": environ.get("REMOTE_ADDR", ""),
                "method": environ.get("REQUEST_METHOD", ""),
                "path": _readable(environ.get("PATH_INFO", "")),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "time": self._stamp,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        try:
            os.write(self.fd, line)  # one line < PIPE_BUF: never interleaved with another's
        except OSError:
            pass  # a closed terminal must not fail the request


def _readable(path: str) -> str:
    """The path as the client wrote it: WSGI hands over its bytes as Latin-1 characters
    (``café`` arrives as ``cafÃ©``); bytes that are not UTF-8 become U+FFFD."""
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # already text (a server that decoded it)
        return path


class _LoggedWhenClosed:
    """A streamed body that writes its log line once the server closes it."""

    def __init__(self, body: Iterable[bytes], log: Callable[[], None]) -> None:
        self.body = body
        self.log = log

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.log()
