"""Console door: the operator console (server-rendered pages, live updates over server-sent events)
at ``/console``, over the one HTTP server.

================================================  ===============================================
route                                             does
================================================  ===============================================
GET ``/console/signin``, POST (token)             sign in: an API token for a session cookie
POST ``/console/signout``                         end the session
GET ``/console``                                  overview: replicas, devices, alerts, errors
GET ``/console/models[/{model}]``                 models; POST ``.../{model}/load|unload|rollback``
GET ``/console/jobs``                             jobs; POST ``/console/jobs/{id}/cancel|resume``;
                                                  GET ``/console/jobs/{id}/failures.csv``
GET ``/console/imaging``                          studies, series, results, exports; POST
                                                  ``/console/imaging/exports/{id}/retry``
GET ``/console/imaging/results/{id}[/slice.png]``  the result viewer (SEG overlay, SR findings)
GET ``/console/imaging/results/{id}/map.png``    an explanation map over its image (``overlay=0``: without)
GET ``/console/ward``                             beds, NEWS2, trend, rhythm; POST
                                                  ``/console/ward/alerts/{id}/acknowledge``
GET ``/console/audit``, POST ``.../verify``        search the audit trail, verify its chain
GET ``/console/profiles``                         profiles and placement
GET, POST ``/console/planner``                    the fleet planner
GET ``/console/events``                           live figures (server-sent events)
================================================  ===============================================

Sessions, CSRF and errors: :mod:`medserve.transport.console_door`; the pages and actions:
:mod:`medserve.transport.console_pages`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from medserve.console.parts import ConsoleParts
from medserve.transport.console_door import PREFIX, ConsoleDoor
from medserve.transport.console_pages import page_routes


def console_routes(parts: ConsoleParts, idle_timeout_s: float = 900.0) -> list[BaseRoute]:
    """The console's routes, to mount beside the REST door's."""
    door = ConsoleDoor(parts, idle_timeout_s)
    return [
        Route(f"{PREFIX}/signin", door.guarded(door.signin_page), methods=["GET"]),
        Route(f"{PREFIX}/signin", door.guarded(door.signin), methods=["POST"]),
        Route(f"{PREFIX}/signout", door.guarded(door.signout), methods=["POST"]),
        Route(f"{PREFIX}/static/{{name}}", door.static, methods=["GET"]),
        Route(f"{PREFIX}/events", door.guarded(door.events), methods=["GET"]),
        *page_routes(door),
    ]
