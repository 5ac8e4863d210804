"""The dashboard of a local cluster daskimg starts: built on its first visit, and quiet when a page is left.

Dask's scheduler builds its Bokeh dashboard as it starts: about half a second of CPU, most of
it importing Bokeh, and 60 MB of memory. On a machine with few cores, that CPU is taken from
the workers' start-up in every run, watched or not. So the scheduler of a cluster daskimg
starts has none at first, and one more route, added with tornado's ``Application.add_handlers``:
while there is no dashboard, a request for a page that none of the scheduler's own routes
serves (``/``, ``/status``, ``/individual-task-stream`` ...) builds it, as the scheduler would
have (``distributed.dashboard.scheduler.connect``, with Bokeh imported off the event loop),
then sends the browser back to the page it asked for. From then on the route matches nothing,
and the dashboard serves its pages. The scheduler's own routes (``/health``, ``/metrics``,
``/info`` ...) never reach it, except the list of the dashboard's plots that JupyterLab's Dask
extension reads (``/individual-plots.json``): that one builds the dashboard too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Iterator
from typing import Any

import dask
from distributed.http.utils import get_handlers
from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, PathMatches, Rule
from tornado.web import RequestHandler

__all__ = ["build_on_first_visit", "quiet_disconnects"]

_PREFIX = "/"  # the scheduler's (Dask's default ``http_prefix``, which LocalCluster keeps)
_PLOTS = "individual-plots.json"  # the scheduler's own route that lists the dashboard's plots


def build_on_first_visit(dask_scheduler: Any = None) -> None:
    """Add the route that builds the dashboard of ``dask_scheduler`` (started without one) on its first
    visit; for ``Client.run_on_scheduler``, which runs it on the scheduler's event loop."""
    own = get_handlers(dask_scheduler, dask.config.get("distributed.scheduler.http.routes"), prefix=_PREFIX)
    lazy = _Unbuilt(dask_scheduler, [PathMatches(pattern) for pattern, *_ in own if _PLOTS not in pattern])
    dask_scheduler.http_application.add_handlers(r".*", [Rule(lazy, _BuildThenReturn, {"unbuilt": lazy})])


class _Unbuilt(Matcher):
    """Matches a request for a dashboard page while the dashboard is not built; builds it once."""

    def __init__(self, scheduler: Any, own: list[PathMatches]) -> None:
        self.scheduler = scheduler
        self.own = own  # the scheduler's own routes
        self.built = False
        self._building: asyncio.Future[None] | None = None

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if self.built or any(route.match(request) is not None for route in self.own):
            return None
        return {}

    async def build(self) -> None:
        if self._building is None:  # the first request builds; those that come meanwhile wait for it
            self._building = asyncio.ensure_future(self._build())
        await asyncio.shield(self._building)

    async def _build(self) -> None:
        # Bokeh's import takes half a second: in a thread, so that the scheduler goes on meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, importlib.import_module,
                                                         "distributed.dashboard.scheduler")
        from distributed.dashboard.scheduler import connect

        s = self.scheduler
        connect(s.http_application, s.http_server, s, prefix=_PREFIX)
        self.built = True


class _BuildThenReturn(RequestHandler):
    """Builds the dashboard, then redirects to the page asked for, which the dashboard now serves."""

    def initialize(self, unbuilt: _Unbuilt) -> None:
        self.unbuilt = unbuilt

    async def get(self) -> None:
        await self.unbuilt.build()
        # back to this server's own path: "//host/..." would send the browser to another host
        self.redirect("/" + (self.request.uri or "").lstrip("/"))


class _SessionlessDisconnect(logging.Filter):
    """Drops Bokeh's ``AssertionError`` when a browser leaves a dashboard page before its session began.

    Bokeh's websocket handler asks for the session of a connection that never got one
    (``bokeh/server/connection.py``: ``assert self._session is not None``), and tornado logs
    the traceback as an uncaught error: a page opened and closed again, nothing broken.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or not isinstance(record.exc_info[1], AssertionError):
            return True
        tb = record.exc_info[2]
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_frame.f_code.co_filename if tb is not None else ""
        return not where.replace("\\", "/").endswith("bokeh/server/connection.py")


@contextlib.contextmanager
def quiet_disconnects() -> Iterator[None]:
    """While a local cluster runs (its scheduler, with the dashboard, runs in this process): see
    :class:`_SessionlessDisconnect`. The filter is removed afterwards."""
    logger = logging.getLogger("tornado.application")
    quiet = _SessionlessDisconnect()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
