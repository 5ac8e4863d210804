"""The Dask dashboard of the clusters daskimg starts, built on its first visit.

The scheduler's Bokeh dashboard (Bokeh itself and some forty pages) takes about 0.4 s to
set up, and a scheduler sets it up as it starts: on the way to the first task, in every
run, watched or not. daskimg's local clusters start their scheduler without it; the HTTP
server still listens at the dashboard address, with Dask's other routes (``/health``,
``/metrics``, ``/json/...``). :func:`build_on_first_visit` adds a route that, on the first
request for any other page, sets the dashboard up on the scheduler, then redirects to the
same address, which Bokeh now serves. That first page takes half a second longer.
"""

from __future__ import annotations

from typing import Any

from tornado import web

__all__ = ["build_on_first_visit"]

PREFIX = "/"  # the scheduler's default http_prefix; daskimg's clusters use it


class _FirstVisit(web.RequestHandler):
    def initialize(self, scheduler: Any, pending: web.Application) -> None:
        self.scheduler = scheduler
        self.pending = pending

    def get(self, *args: str) -> None:
        routing = self.scheduler.http_application
        if self.pending in routing.applications:  # first visit (the event loop serves one request at a time)
            routing.applications.remove(self.pending)
            try:
                import distributed.dashboard.scheduler as dashboard
            except ImportError:
                self.set_status(503)
                self.finish("The Dask dashboard needs Bokeh: pip install bokeh")
                return
            dashboard.connect(routing, self.scheduler.http_server, self.scheduler, prefix=PREFIX)
        self.redirect(self.request.uri or "/")


def build_on_first_visit(dask_scheduler: Any = None) -> None:
    """Set the dashboard up on the first request for it (run with ``Client.run_on_scheduler``).

    The scheduler must have been started with ``dashboard=False`` and a dashboard address.
    Requests the scheduler serves itself are untouched: its own routes come before this one.
    """
    pending = web.Application()
    pending.add_handlers(r".*", [(r"/.*", _FirstVisit, {"scheduler": dask_scheduler, "pending": pending})])
    dask_scheduler.http_application.add_application(pending)
