"""Template REST API: thin views over the validation core, the writer agent and the read model.

Reads are served from this worker's read model (every worker holds every template's published
version and draft). Writes, and history reads, are sent to ``write_template`` (the table's
single writer) with a request id; the view waits, with a timeout, for the answer on the results
topic and applies it to the local read model at once, so a client that got ``201`` can ``GET``
the template from the same worker immediately.

Validation (compile and a trial render) and previews run in :class:`app.render_pool.RenderPool`
child processes under a hard time limit: the template comes straight from the client, and the
event loop that runs these views also answers ``/health`` and consumes Kafka. A template over
its budget, or one that does not compile or render, is a ``400`` naming the limit; never a 500.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web

from app import codec
from app.core import render
from app.core import templates as model
from app.core.access import EDIT, READ, Principal
from app.flows.templates import READ_OPS, content, etag
from app.render_pool import (
    RenderJobInvalid,
    RenderPoolBusy,
    RenderPoolError,
    RenderPoolUnavailable,
)
from tables.template_cache import CachedTemplate
from web.errors import ApiError, json_response, json_stream
from web.http import Gate, ask, if_match, query_bool, read_json

if TYPE_CHECKING:
    from app.main import Context

log = logging.getLogger(__name__)

DIGITS = re.compile(r"[0-9]{1,10}")

#: ``GET /api/template?status=``: what the console filters on.
STATUSES = ("active", "inactive", "draft")


class TemplateApi:
    """The template endpoints' logic, one method per operation; the views only route to it."""

    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.cache = ctx.cache
        self.pool = ctx.render_pool
        self.commands = ctx.topics.template_commands
        self.gate = Gate.of(ctx)

    async def admit(self, request: web.Request, scope: str) -> Principal:
        return await self.gate.admit(request, scope)

    def language_of(self, request: web.Request) -> str:
        language = request.query.get("language") or self.settings.template_default_language
        try:
            return model.check_language(language)
        except model.TemplateInvalid as exc:
            raise invalid(exc) from None

    def key_of(self, request: web.Request, name: str) -> tuple[str, str]:
        """The (name, language) a template route names: the path and ``?language=``."""
        try:
            return model.check_name(name), self.language_of(request)
        except model.TemplateInvalid as exc:
            raise invalid(exc) from None

    async def validated(self, payload: Any, prefix: str = "") -> dict[str, Any]:
        """The template as stored, compiled and trial-rendered in a renderer process."""
        settings = self.settings
        try:
            return await self.pool.validate(
                payload,
                default_language=settings.template_default_language,
                max_body_chars=settings.template_max_body_chars,
                otp_length=settings.otp_length,
            )
        except model.TemplateInvalid as exc:
            raise invalid(exc, prefix) from None
        except RenderPoolError as exc:
            raise pool_error(exc, "invalid template", prefix.rstrip(".") or "$") from None

    async def body_of(self, request: web.Request) -> dict[str, Any]:
        return await self.validated(await read_json(request, self.settings.api_max_body_bytes))

    async def write(
        self,
        op: str,
        key: str,
        by: Principal | None = None,
        request: web.Request | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send one command to the writer, wait for its answer, apply it here at once.

        ``request``: the HTTP request whose ``If-Match`` the writer checks (a ``412`` here).
        """
        precondition = if_match(request) if request is not None else None

        async def send(request_id: str) -> None:
            command = {"id": request_id, "op": op, "key": key, **fields}
            if by is not None:
                command["by"] = by.name
            if precondition is not None:
                command["ifMatch"] = precondition
            await self.commands.send(key=key.encode(), value=codec.dumps(command))

        result = await ask(
            self.cache,
            self.settings.api_write_timeout_seconds,
            send,
            "the template store did not answer in time; retry",
        )
        status = result["status"]
        if by is not None:
            log.info("template %s: %s by %s answered %d", key, op, by.name, status)
        if status == 412:
            raise changed_since_read(result)
        if op in READ_OPS:
            return result
        if status in (200, 201) or (status == 204 and op != "delete"):
            await self.cache.apply_own(key, result["template"], result["draft"], result["rev"])
        elif status == 204:
            await self.cache.apply_own(key, None)
        return result

    def entry(self, name: str, language: str) -> CachedTemplate:
        entry = self.cache.get(name, language)
        if entry is None:
            raise not_found(name, language)
        return entry

    # -- the operations -------------------------------------------------------------------
    def matching(self, request: web.Request) -> list[CachedTemplate]:
        """The templates a list request's filters select, in key order."""
        wanted_type = one_of(request, "type", model.TYPES)
        status = one_of(request, "status", STATUSES)
        wanted = {
            "type": wanted_type,
            "language": request.query.get("language"),
            "active": query_bool(request, "active"),
        }
        name = (request.query.get("name") or "").lower()
        return [
            e
            for e in self.cache.entries()
            if all(value is None or e.data[field] == value for field, value in wanted.items())
            and name in e.data["name"].lower()
            and matches_status(e, status)
        ]

    def get(self, request: web.Request, name: str) -> Tagged:
        name, language = self.key_of(request, name)
        entry = self.entry(name, language)
        tag = etag(entry.data.get("createdAt"), entry.revision)
        if not query_bool(request, "draft"):
            return Tagged(entry.data, tag)
        if entry.draft is None:
            raise ApiError(404, f"template '{name}' has no draft for language '{language}'")
        return Tagged(entry.draft, tag)

    async def create(self, request: web.Request, by: Principal) -> Tagged:
        template = await self.body_of(request)
        return await self.create_template(template, by)

    async def create_template(
        self, template: dict[str, Any], by: Principal, summary: str | None = None
    ) -> Tagged:
        key = model.template_key(template["name"], template["language"])
        result = await self.write("create", key, by, template=template, summary=summary)
        if result["status"] == 409:
            raise ApiError(
                409,
                f"template '{template['name']}' already exists for language "
                f"'{template['language']}'",
                [{"field": "name", "message": "use PUT to replace it"}],
            )
        return Tagged(result["template"], result_etag(result))

    async def replace(self, request: web.Request, name: str, by: Principal) -> Tagged:
        name, language = self.key_of(request, name)
        draft = query_bool(request, "draft")
        template = await self.body_of(request)
        # The URL names the template; a body naming another one is a mistake, not a rename.
        template = {**template, "name": name, "language": language}
        op = "save_draft" if draft else "replace"
        key = model.template_key(name, language)
        result = await self.write(op, key, by, request, template=template)
        if result["status"] == 404:
            raise not_found(name, language)
        return Tagged(result["body"] if draft else result["template"], result_etag(result))

    async def delete(self, request: web.Request, name: str, by: Principal) -> str | None:
        """Delete the template, or its draft; the ETag of what is left (a template without
        its draft), if anything."""
        name, language = self.key_of(request, name)
        draft = query_bool(request, "draft")
        op = "discard_draft" if draft else "delete"
        result = await self.write(op, model.template_key(name, language), by, request)
        if result["status"] == 404:
            if draft and result["template"] is not None:
                raise ApiError(404, f"template '{name}' has no draft for language '{language}'")
            raise not_found(name, language)
        return result_etag(result)

    async def publish(self, request: web.Request, name: str, by: Principal) -> Tagged:
        name, language = self.key_of(request, name)
        result = await self.write("publish", model.template_key(name, language), by, request)
        if result["status"] == 404:
            raise not_found(name, language)
        if result["status"] == 409:
            raise ApiError(
                409,
                f"template '{name}' has no draft to publish for language '{language}'",
                [{"field": "draft", "message": "save one with PUT ...?draft=true first"}],
            )
        return Tagged(result["template"], result_etag(result))

    async def versions(self, request: web.Request, name: str) -> dict[str, Any]:
        name, language = self.key_of(request, name)
        result = await self.write("versions", model.template_key(name, language))
        if result["status"] == 404:
            raise not_found(name, language)
        items = result["body"]["items"]
        return {"items": items, "count": len(items)}

    async def version(self, request: web.Request, name: str, version: str) -> dict[str, Any]:
        name, language = self.key_of(request, name)
        number = version_number(version)
        result = await self.write("version", model.template_key(name, language), version=number)
        if result["status"] == 404:
            raise version_not_found(name, language, number, result)
        return result["body"]

    async def restore(self, request: web.Request, name: str, version: str, by: Principal) -> Tagged:
        name, language = self.key_of(request, name)
        number = version_number(version)
        key = model.template_key(name, language)
        result = await self.write("restore", key, by, request, version=number)
        if result["status"] == 404:
            raise version_not_found(name, language, number, result)
        return Tagged(result["template"], result_etag(result))

    async def clone(self, request: web.Request, name: str, by: Principal) -> Tagged:
        name, language = self.key_of(request, name)
        payload = await read_json(request, self.settings.api_max_body_bytes)
        new_name, new_language = clone_target(payload, name, language)
        source = self.entry(name, language).data
        copied = {**content(source), "name": new_name, "language": new_language}
        template = await self.validated(copied)
        return await self.create_template(template, by, f"cloned from {name} ({language})")

    async def preview(self, request: web.Request, name: str) -> dict[str, Any]:
        name, language = self.key_of(request, name)
        data = await self.preview_data(request)
        entry = self.entry(name, language)
        if query_bool(request, "draft"):
            if entry.draft is None:
                raise ApiError(404, f"template '{name}' has no draft for language '{language}'")
            return await self.render_preview({**entry.draft, "version": None}, data)
        if entry.compiled is None:
            raise ApiError(400, f"template '{name}' does not compile")
        return await self.render_preview(entry.data, data)

    async def preview_unsaved(self, request: web.Request) -> dict[str, Any]:
        """Render a template that is not stored (the console's live preview)."""
        payload = await read_json(request, self.settings.api_max_body_bytes)
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid preview request", [preview_shape("$")])
        template = await self.validated(payload.get("template"), "template.")
        data = preview_payload_data(payload)
        return await self.render_preview({**template, "version": None}, data)

    async def preview_data(self, request: web.Request) -> dict[str, Any]:
        payload = await read_json(request, self.settings.api_max_body_bytes)
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid preview request", [preview_shape("data")])
        return preview_payload_data(payload)

    async def render_preview(
        self, template: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        sample = "1234567890"[: self.settings.otp_length]
        data = {**data, "otpValue": sample}
        params = template.get("params", [])
        missing = render.missing_mandatory(params, data)
        if missing:
            raise ApiError(
                400,
                "missing mandatory parameters",
                [{"field": f"data.{key}", "message": "is mandatory"} for key in missing],
            )
        mistyped = model.mistyped(params, data)
        if mistyped:
            raise ApiError(
                400,
                "parameters of the wrong type",
                [{"field": f"data.{key}", "message": message} for key, message in mistyped],
            )
        rendered = await self._render(template, data)
        return {
            "name": template["name"],
            "language": template["language"],
            "type": template["type"],
            "version": template.get("version"),
            "subject": rendered.subject,
            "body": rendered.body,
            "text": rendered.text,
            "otpValue": sample,
        }

    async def _render(self, template: dict[str, Any], data: dict[str, Any]) -> render.Rendered:
        name = template["name"]
        try:
            return await self.pool.preview(template, data)
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
            raise pool_error(exc, "template could not be rendered", "data") from None


# -- small rules, kept out of the class so they read as rules ------------------------------
def matches_status(entry: CachedTemplate, status: str | None) -> bool:
    if status is None:
        return True
    if status == "draft":
        return entry.draft is not None
    return bool(entry.data.get("active", True)) == (status == "active")


def one_of(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise ApiError(
            400,
            f"invalid query parameter '{name}'",
            [{"field": name, "message": f"must be one of {', '.join(allowed)}"}],
        )
    return value


def version_number(raw: str) -> int:
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= 2**31 - 1 or raw.startswith("0"):
        raise ApiError(
            400,
            "invalid path parameter 'version'",
            [{"field": "version", "message": "must be a positive integer"}],
        )
    return int(raw)


def clone_target(payload: Any, name: str, language: str) -> tuple[str, str]:
    """The (name, language) of a clone: the body's, each defaulting to the source's."""
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "invalid clone request",
            [{"field": "$", "message": "must be an object {name?, language?}"}],
        )
    try:
        new_name = model.check_name(model.or_default(payload.get("name"), name))
        new_language = model.check_language(model.or_default(payload.get("language"), language))
    except model.TemplateInvalid as exc:
        raise invalid(exc) from None
    if (new_name, new_language) == (name, language):
        raise ApiError(
            400,
            "a clone needs a new name or language",
            [{"field": "name", "message": "give another name, language, or both"}],
        )
    return new_name, new_language


def preview_shape(field: str) -> dict[str, str]:
    return {"field": field, "message": "must be an object of template parameters"}


def preview_payload_data(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data", {})
    if not isinstance(data, dict):
        raise ApiError(400, "invalid preview request", [preview_shape("data")])
    return data


@dataclass(frozen=True)
class Tagged:
    """An answer about one template, with the ETag of its row (None once it is gone)."""

    body: Any
    etag: str | None


def result_etag(result: dict[str, Any]) -> str | None:
    """The ETag of the row a writer's result describes."""
    template = result.get("template")
    return etag(template.get("createdAt"), int(result.get("rev", 0))) if template else None


def changed_since_read(result: dict[str, Any]) -> ApiError:
    """The ``412`` of a write whose ``If-Match`` no longer names the template's row."""
    current = result_etag(result)
    return ApiError(
        412,
        "the template changed since it was read",
        [{"field": "If-Match", "message": f"the template is now {current}: read it again"}],
    )


def template_response(answer: Tagged, status: int = 200) -> web.Response:
    headers = {"ETag": answer.etag} if answer.etag is not None else None
    return json_response(answer.body, status=status, headers=headers)


def not_found(name: str, language: str) -> ApiError:
    return ApiError(404, f"template '{name}' not found for language '{language}'")


def version_not_found(name: str, language: str, version: int, result: dict[str, Any]) -> ApiError:
    if result.get("template") is None:
        return not_found(name, language)
    return ApiError(404, f"template '{name}' ({language}) has no version {version} in its history")


def invalid(exc: model.TemplateInvalid, prefix: str = "") -> ApiError:
    return ApiError(
        400,
        "invalid template",
        [{**p.to_dict(), "field": prefix + p.field} for p in exc.problems],
    )


def pool_error(exc: RenderPoolError, error: str, request_field: str) -> ApiError:
    """A renderer that could not answer: the template's fault (over time, out of memory) is a
    400 naming the limit, as is a request no renderer can be sent (``request_field``); a busy
    or stopped renderer is the service's, a 503 to retry."""
    if isinstance(exc, RenderPoolBusy | RenderPoolUnavailable):
        return ApiError(503, str(exc))
    field = request_field if isinstance(exc, RenderJobInvalid) else "body"
    return ApiError(400, error, [{"field": field, "message": str(exc)}])


def register(ctx: Context) -> TemplateApi:
    app, api = ctx.app, TemplateApi(ctx)

    @app.page("/api/template", name="template_collection")
    class TemplateCollection(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            await api.admit(request, READ)
            entries = api.matching(request)
            items = ({**e.data, "hasDraft": e.draft is not None} for e in entries)
            return await json_stream(request, {"count": len(entries)}, "items", items)

        async def post(self, request: web.Request) -> web.Response:
            by = await api.admit(request, EDIT)
            return template_response(await api.create(request, by), status=201)

    @app.page("/api/template/{name}", name="template_item")
    class TemplateItem(faust.web.View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            await api.admit(request, READ)
            return template_response(api.get(request, name))

        async def put(self, request: web.Request, name: str) -> web.Response:
            by = await api.admit(request, EDIT)
            return template_response(await api.replace(request, name, by))

        async def delete(self, request: web.Request, name: str) -> web.Response:
            by = await api.admit(request, EDIT)
            tag = await api.delete(request, name, by)
            return web.Response(status=204, headers={"ETag": tag} if tag else None)

    @app.page("/api/template/{name}/preview", name="template_preview")
    class TemplatePreview(faust.web.View):
        async def post(self, request: web.Request, name: str) -> web.Response:
            await api.admit(request, READ)
            return json_response(await api.preview(request, name))

    @app.page("/api/preview", name="preview_unsaved")
    class UnsavedPreview(faust.web.View):
        async def post(self, request: web.Request) -> web.Response:
            await api.admit(request, READ)
            return json_response(await api.preview_unsaved(request))

    register_lifecycle(app, api)
    return api


def register_lifecycle(app: faust.App, api: TemplateApi) -> None:
    """Publish, history, restore and clone: the routes under a template besides preview."""

    @app.page("/api/template/{name}/publish", name="template_publish")
    class TemplatePublish(faust.web.View):
        async def post(self, request: web.Request, name: str) -> web.Response:
            by = await api.admit(request, EDIT)
            return template_response(await api.publish(request, name, by))

    @app.page("/api/template/{name}/versions", name="template_versions")
    class TemplateVersions(faust.web.View):
        async def get(self, request: web.Request, name: str) -> web.Response:
            await api.admit(request, READ)
            return json_response(await api.versions(request, name))

    @app.page("/api/template/{name}/versions/{version}", name="template_version")
    class TemplateVersion(faust.web.View):
        async def get(self, request: web.Request, name: str, version: str) -> web.Response:
            await api.admit(request, READ)
            return json_response(await api.version(request, name, version))

    @app.page("/api/template/{name}/versions/{version}/restore", name="template_restore")
    class TemplateRestore(faust.web.View):
        async def post(self, request: web.Request, name: str, version: str) -> web.Response:
            by = await api.admit(request, EDIT)
            return template_response(await api.restore(request, name, version, by))

    @app.page("/api/template/{name}/clone", name="template_clone")
    class TemplateClone(faust.web.View):
        async def post(self, request: web.Request, name: str) -> web.Response:
            by = await api.admit(request, EDIT)
            return template_response(await api.clone(request, name, by), status=201)
