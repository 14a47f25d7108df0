"""The console's pages and actions: each reads its data through :mod:`medserve.console` (which calls
the same public methods as the JSON doors) and renders it; each action checks the session's CSRF
token (:meth:`ConsoleDoor.action`), does what the matching API call does, is audited, and redirects
back with a message."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from medserve.console import audit_page, models_page, operations
from medserve.console.overview import overview
from medserve.console.parts import MONITOR_MODEL
from medserve.console.profiles_page import Planner, profiles
from medserve.console.ward import ward
from medserve.planning.report import METHOD
from medserve.streaming.messages import Alert
from medserve.transport.console_door import PREFIX, ConsoleDoor
from medserve.values.access import Action
from medserve.values.errors import InvalidInput, ModelNotFound, Unsupported


def page_routes(door: ConsoleDoor) -> list[BaseRoute]:
    parts = door.parts
    service = parts.service
    planner = Planner()

    async def overview_page(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("overview.html", session, "overview", **await overview(parts, caller))

    async def models(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("models.html", session, "models", **models_page.models(parts, caller))

    async def model(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        name = request.path_params["model"]
        data = models_page.model_detail(parts, caller, name)
        return door.render("model.html", session, "models", title=f"Model {name}", **data)

    async def model_action(request: Request) -> Response:
        session, caller, fields = await door.action(request)
        name, operation = request.path_params["model"], request.path_params["operation"]
        if operation == "load":
            await service.load_model(name, caller)
            session.flash(
                f"{name} loaded: versions {', '.join(service.model_metadata(name, '', caller).versions)}"
            )
        elif operation == "unload":
            await service.unload_model(name, caller)
            session.flash(f"{name} unloaded")
        elif operation == "rollback":
            outcome = await service.rollback_model(name, caller, None, fields.get("clear") == "1")
            pinned = outcome.get("pinned")
            pin = f"pinned to version {pinned}" if pinned else "no pin"
            session.flash(f"{name}: {pin}; serving versions {outcome.get('serving')}")
        else:
            raise ModelNotFound(f"no model action '{operation}'")
        return door.redirect(f"{PREFIX}/models" if operation == "unload" else f"{PREFIX}/models/{name}")

    async def jobs(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("jobs.html", session, "jobs", **await operations.jobs(parts, caller))

    async def job_failures(request: Request) -> Response:
        _, caller = await door.signed_in(request)
        job_id = request.path_params["job"]
        text = await operations.failures_csv(parts, caller, job_id)
        disposition = f'attachment; filename="job-{job_id[:40]}-failures.csv"'
        return Response(
            text, media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition}
        )

    async def job_action(request: Request) -> Response:
        session, caller, _ = await door.action(request)
        if parts.jobs is None:
            raise Unsupported("this server runs no jobs")
        job_id, operation = request.path_params["job"], request.path_params["operation"]
        if operation == "cancel":
            status = await parts.jobs.cancel(job_id, caller)
        elif operation == "resume":
            status = await parts.jobs.resume(job_id, caller)
        else:
            raise ModelNotFound(f"no job action '{operation}'")
        session.flash(f"job {status.id}: {operation} asked; now {status.state}")
        return door.redirect(f"{PREFIX}/jobs")

    async def imaging(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("imaging.html", session, "imaging", **await operations.imaging(parts, caller))

    async def result(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        raw = request.query_params.get("index", "").strip()
        if raw and not raw.isdigit():
            raise InvalidInput("the slice number must be a whole number >= 0")
        data = await operations.result(parts, caller, request.path_params["result"])
        overlay = request.query_params.get("overlay", "1").strip() != "0"
        return door.render(
            "result.html",
            session,
            "imaging",
            title="Result",
            index=int(raw) if raw else None,
            overlay=overlay,
            **data,
        )

    async def slice_png(request: Request) -> Response:
        _, caller = await door.signed_in(request)
        raw = request.query_params.get("index", "").strip()
        if raw and not raw.isdigit():
            raise InvalidInput("the slice number must be a whole number >= 0")
        image = await operations.slice_image(
            parts, caller, request.path_params["result"], int(raw) if raw else None
        )
        headers = {
            "Cache-Control": "no-store",
            "X-Slice-Index": str(image.index),
            "X-Slice-Count": str(image.count),
        }
        return Response(image.png, media_type="image/png", headers=headers)

    async def map_png(request: Request) -> Response:
        _, caller = await door.signed_in(request)
        raw = request.query_params.get("overlay", "1").strip().lower()
        if raw not in ("1", "0", "on", "off", "true", "false"):
            raise InvalidInput("overlay must be 1 or 0 (on or off)")
        image = await operations.map_image(
            parts, caller, request.path_params["result"], raw in ("1", "on", "true")
        )
        headers = {"Cache-Control": "no-store", "X-Map-Peak": f"{image.peak[0]},{image.peak[1]}"}
        return Response(image.png, media_type="image/png", headers=headers)

    async def export_retry(request: Request) -> Response:
        session, caller, _ = await door.action(request)
        if parts.imaging is None:
            raise Unsupported("imaging is not running on this server")
        outbox = parts.imaging.outbox
        export_id = request.path_params["export"]

        async def retry() -> None:
            if not await asyncio.to_thread(outbox.retry, export_id, caller.principal):
                raise ModelNotFound(f"no failed export {export_id}")

        await service.call(
            caller, "", retry, event="export.retry", action=Action.MANAGE, facts={"request_id": export_id}
        )
        session.flash(f"export {export_id} queued to be sent again")
        return door.redirect(f"{PREFIX}/imaging")

    async def ward_page(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("ward.html", session, "ward", **ward(parts, caller))

    async def acknowledge(request: Request) -> Response:
        session, caller, _ = await door.action(request)
        alerts = parts.alerts
        if alerts is None:
            raise Unsupported("the patient monitor is not running on this server")
        alert_id = request.path_params["alert"]

        async def ack() -> Alert:
            return alerts.acknowledge(alert_id, caller.principal.name, time.time())

        alert = await service.call(
            caller,
            MONITOR_MODEL,
            ack,
            event="alert.acknowledge",
            action=Action.ACKNOWLEDGE,
            facts={"request_id": alert_id},
        )
        session.flash(f"alert on bed {alert.sequence_id} acknowledged by {alert.acknowledged_by}")
        return door.redirect(f"{PREFIX}/ward")

    async def audit(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        params = dict(request.query_params)
        data = await audit_page.audit(parts, caller, params)
        more = {k: v for k, v in data["form"].items() if v}
        next_query = urlencode({**more, "before": data["next_before"]}) if data["next_before"] else ""
        return door.render("audit.html", session, "audit", next_query=next_query, **data)

    async def audit_verify(request: Request) -> Response:
        session, caller, _ = await door.action(request)
        result = await audit_page.verify(parts, caller)
        if result.ok:
            text = (
                f"Chain verified: {result.count} records up to record {result.head_seq}, "
                "every hash and link intact."
            )
        else:
            text = f"Chain BROKEN at record {result.bad_seq}: {result.reason} ({result.count} records read)."
        await door.record(caller, "audit.verify", text, "ok" if result.ok else "ChainBroken")
        session.flash(text)
        return door.redirect(f"{PREFIX}/audit")

    async def profiles_view(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        return door.render("profiles.html", session, "profiles", **await profiles(parts, caller))

    async def planner_page(request: Request) -> Response:
        session, caller = await door.signed_in(request)
        text = planner.example(parts, caller)
        return door.render(
            "planner.html", session, "planner", plan_text=text, result=None, error="", method=METHOD
        )

    async def planner_run(request: Request) -> Response:
        session, caller, fields = await door.action(request)
        text = fields.get("plan", "")
        try:
            result = await planner.run(parts, caller, text)
        except InvalidInput as exc:
            return door.render(
                "planner.html",
                session,
                "planner",
                status=400,
                plan_text=text,
                result=None,
                error=str(exc),
                method=METHOD,
            )
        counts = ", ".join(
            f"{o.server.name}: {o.count if o.count is not None else 'cannot'}" for o in result["options"]
        )
        await door.record(caller, "console.plan", f"fleet planned ({counts})")
        return door.render(
            "planner.html",
            session,
            "planner",
            plan_text=text,
            result=result,
            error="",
            method=result["method"],
        )

    guarded = door.guarded
    return [
        Route(PREFIX, guarded(overview_page), methods=["GET"]),
        Route(f"{PREFIX}/models", guarded(models), methods=["GET"]),
        Route(f"{PREFIX}/models/{{model}}", guarded(model), methods=["GET"]),
        Route(f"{PREFIX}/models/{{model}}/{{operation}}", guarded(model_action), methods=["POST"]),
        Route(f"{PREFIX}/jobs", guarded(jobs), methods=["GET"]),
        Route(f"{PREFIX}/jobs/{{job}}/failures.csv", guarded(job_failures), methods=["GET"]),
        Route(f"{PREFIX}/jobs/{{job}}/{{operation}}", guarded(job_action), methods=["POST"]),
        Route(f"{PREFIX}/imaging", guarded(imaging), methods=["GET"]),
        Route(f"{PREFIX}/imaging/results/{{result}}", guarded(result), methods=["GET"]),
        Route(f"{PREFIX}/imaging/results/{{result}}/slice.png", guarded(slice_png), methods=["GET"]),
        Route(f"{PREFIX}/imaging/results/{{result}}/map.png", guarded(map_png), methods=["GET"]),
        Route(f"{PREFIX}/imaging/exports/{{export}}/retry", guarded(export_retry), methods=["POST"]),
        Route(f"{PREFIX}/ward", guarded(ward_page), methods=["GET"]),
        Route(f"{PREFIX}/ward/alerts/{{alert}}/acknowledge", guarded(acknowledge), methods=["POST"]),
        Route(f"{PREFIX}/audit", guarded(audit), methods=["GET"]),
        Route(f"{PREFIX}/audit/verify", guarded(audit_verify), methods=["POST"]),
        Route(f"{PREFIX}/profiles", guarded(profiles_view), methods=["GET"]),
        Route(f"{PREFIX}/planner", guarded(planner_page), methods=["GET"]),
        Route(f"{PREFIX}/planner", guarded(planner_run), methods=["POST"]),
    ]
