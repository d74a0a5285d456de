"""Template REST API: thin views over the validation core, the writer agent and the read model.

Reads are served from this worker's read model (every worker holds every template). Writes are
validated here, then sent to ``write_template`` (the table's single writer) with a request id;
the view waits, with a timeout, for the answer on the results topic and applies it to the local
read model at once, so a client that got ``201`` can ``GET`` the template from the same worker
immediately.

Validation (compile and a trial render) and previews run in :class:`app.render_pool.RenderPool`
child processes under a hard time limit: the template comes straight from the client, and the
event loop that runs these views also answers ``/health`` and consumes Kafka. A template over
its budget, or one that does not compile or render, is a ``400`` naming the limit; never a 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web

from app import codec
from app.core import render
from app.core import templates as model
from app.render_pool import (
    RenderJobInvalid,
    RenderPoolBusy,
    RenderPoolError,
    RenderPoolUnavailable,
)
from tables.template_cache import CachedTemplate
from web.errors import ApiError, json_response
from web.http import ask, guard, query_bool, read_json

if TYPE_CHECKING:
    from app.main import Context


class TemplateApi:
    """The template endpoints' logic, one method per operation; the views only route to it."""

    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.cache = ctx.cache
        self.pool = ctx.render_pool
        self.commands = ctx.topics.template_commands

    async def guard(self, request: web.Request) -> None:
        await guard(request, self.settings, self.cache)

    def language_of(self, request: web.Request) -> str:
        language = request.query.get("language") or self.settings.template_default_language
        try:
            return model.check_language(language)
        except model.TemplateInvalid as exc:
            raise _invalid(exc) from None

    @staticmethod
    def name_of(name: str) -> str:
        try:
            return model.check_name(name)
        except model.TemplateInvalid as exc:
            raise _invalid(exc) from None

    async def body_of(self, request: web.Request) -> dict[str, Any]:
        """The validated template (compiled and trial-rendered in a renderer process)."""
        settings = self.settings
        payload = await read_json(request, settings.api_max_body_bytes)
        try:
            return await self.pool.validate(
                payload,
                default_language=settings.template_default_language,
                max_body_chars=settings.template_max_body_chars,
                otp_length=settings.otp_length,
            )
        except model.TemplateInvalid as exc:
            raise _invalid(exc) from None
        except RenderPoolError as exc:
            raise _pool_error(exc, "invalid template", "$") from None

    async def write(
        self, op: str, key: str, template: dict[str, Any] | None = None
    ) -> dict[str, Any]:

        async def send(request_id: str) -> None:
            command = {"id": request_id, "op": op, "key": key, "template": template}
            await self.commands.send(key=key.encode(), value=codec.dumps(command))

        result = await ask(
            self.cache,
            self.settings.api_write_timeout_seconds,
            send,
            "the template store did not answer in time; retry",
        )
        status = result["status"]
        if status in (200, 201):
            self.cache.apply_own(key, result["template"])
        elif status == 204:
            self.cache.apply_own(key, None)
        return result

    def entry(self, name: str, language: str) -> CachedTemplate:
        entry = self.cache.get(name, language)
        if entry is None:
            raise ApiError(404, f"template '{name}' not found for language '{language}'")
        return entry

    # -- the operations -------------------------------------------------------------------
    def list(self, request: web.Request) -> dict[str, Any]:
        wanted_type = request.query.get("type")
        if wanted_type is not None and wanted_type not in model.TYPES:
            raise ApiError(
                400,
                "invalid query parameter 'type'",
                [{"field": "type", "message": f"must be one of {', '.join(model.TYPES)}"}],
            )
        wanted = {
            "type": wanted_type,
            "language": request.query.get("language"),
            "active": query_bool(request, "active"),
        }
        items = [
            t
            for t in self.cache.all()
            if all(value is None or t[field] == value for field, value in wanted.items())
        ]
        return {"items": items, "count": len(items)}

    async def create(self, request: web.Request) -> dict[str, Any]:
        template = await self.body_of(request)
        key = model.template_key(template["name"], template["language"])
        result = await self.write("create", key, template)
        if result["status"] == 409:
            raise ApiError(
                409,
                f"template '{template['name']}' already exists for language "
                f"'{template['language']}'",
                [{"field": "name", "message": "use PUT to replace it"}],
            )
        return result["template"]

    async def replace(self, request: web.Request, name: str) -> dict[str, Any]:
        name, language = self.name_of(name), self.language_of(request)
        template = await self.body_of(request)
        # The URL names the template; a body naming another one is a mistake, not a rename.
        template = {**template, "name": name, "language": language}
        result = await self.write("replace", model.template_key(name, language), template)
        if result["status"] == 404:
            raise ApiError(404, f"template '{name}' not found for language '{language}'")
        return result["template"]

    async def delete(self, request: web.Request, name: str) -> None:
        name, language = self.name_of(name), self.language_of(request)
        result = await self.write("delete", model.template_key(name, language))
        if result["status"] == 404:
            raise ApiError(404, f"template '{name}' not found for language '{language}'")

    async def preview(self, request: web.Request, name: str) -> dict[str, Any]:
        name, language = self.name_of(name), self.language_of(request)
        payload = await read_json(request, self.settings.api_max_body_bytes)
        if not isinstance(payload, dict) or not isinstance(payload.get("data", {}), dict):
            raise ApiError(
                400,
                "invalid preview request",
                [{"field": "data", "message": "must be an object of template parameters"}],
            )
        entry = self.entry(name, language)
        if entry.compiled is None:
            raise ApiError(400, f"template '{name}' does not compile")
        sample = "1234567890"[: self.settings.otp_length]
        data = {**payload.get("data", {}), "otpValue": sample}
        missing = render.missing_mandatory(entry.data.get("params", []), data)
        if missing:
            raise ApiError(
                400,
                "missing mandatory parameters",
                [{"field": f"data.{key}", "message": "is mandatory"} for key in missing],
            )
        rendered = await self._render_preview(name, entry, data)
        return {
            "name": name,
            "language": language,
            "type": entry.data["type"],
            "version": entry.version,
            "subject": rendered.subject,
            "body": rendered.body,
            "text": rendered.text,
            "otpValue": sample,
        }

    async def _render_preview(
        self, name: str, entry: CachedTemplate, data: dict[str, Any]
    ) -> render.Rendered:
        try:
            return await self.pool.preview(entry.data, data)
        except render.TemplateError as exc:
            raise ApiError(
                400,
                f"template '{name}' does not compile",
                [{"field": exc.field, "message": str(exc)}],
            ) from None
        except render.RenderError as exc:
            raise ApiError(
                400, "template could not be rendered", [{"field": exc.field, "message": str(exc)}]
            ) from None
        except RenderPoolError as exc:
            raise _pool_error(exc, "template could not be rendered", "data") from None


def register(ctx: Context) -> None:
    app, api = ctx.app, TemplateApi(ctx)

    @app.page("/api/template", name="template_collection")
    class TemplateCollection(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            await api.guard(request)
            return json_response(api.list(request))

        async def post(self, request: web.Request) -> web.Response:
            await api.guard(request)
            return json_response(await api.create(request), status=201)

    @app.page("/api/template/{name}", name="template_item")
    class TemplateItem(faust.web.View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            await api.guard(request)
            return json_response(api.entry(api.name_of(name), api.language_of(request)).data)

        async def put(self, request: web.Request, name: str) -> web.Response:
            await api.guard(request)
            return json_response(await api.replace(request, name))

        async def delete(self, request: web.Request, name: str) -> web.Response:
            await api.guard(request)
            await api.delete(request, name)
            return web.Response(status=204)

    @app.page("/api/template/{name}/preview", name="template_preview")
    class TemplatePreview(faust.web.View):
        async def post(self, request: web.Request, name: str) -> web.Response:
            await api.guard(request)
            return json_response(await api.preview(request, name))


def _invalid(exc: model.TemplateInvalid) -> ApiError:
    return ApiError(400, "invalid template", [p.to_dict() for p in exc.problems])


def _pool_error(exc: RenderPoolError, error: str, request_field: str) -> ApiError:
    """A renderer that could not answer: the template's fault (over time, out of memory) is a
    400 naming the limit, as is a request no renderer can be sent (``request_field``); a busy
    or stopped renderer is the service's, a 503 to retry."""
    if isinstance(exc, RenderPoolBusy | RenderPoolUnavailable):
        return ApiError(503, str(exc))
    field = request_field if isinstance(exc, RenderJobInvalid) else "body"
    return ApiError(400, error, [{"field": field, "message": str(exc)}])
