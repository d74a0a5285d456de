"""Export and import templates as one JSON document, and ``GET /api/whoami``.

An export holds each template's content (no versions, times or history): what another
deployment needs to send the same notifications. An import checks every template in the
document as a ``POST`` would, then says per template what it would do (create, update,
unchanged, refused and why); with ``dryRun=true`` it stops there. Otherwise it applies nothing
unless nothing is refused, so a document with one bad template is fixed and sent again rather
than half applied. Each template is then written by the writer agent as a new version, one
after another: an import interrupted by an outage leaves the templates written so far, and
sending the same document again finishes it (those already written answer ``unchanged``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web

from app.core import templates as model
from app.core.access import IMPORT, READ, Principal
from app.flows.templates import content
from web.errors import ApiError, json_response, json_stream
from web.http import Gate, query_bool, read_json
from web.templates import TemplateApi

if TYPE_CHECKING:
    from app.main import Context

FORMAT = "faust-otp.templates"
FORMAT_VERSION = 1
MAX_TEMPLATES = 1000
ACTIONS = ("create", "update", "unchanged", "refused")


def export_header() -> dict[str, Any]:
    """An export document's fields but its ``templates``."""
    return {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "exportedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def document_templates(document: Any) -> list[Any]:
    """The templates of an import document, or a 400 naming what is wrong with its shape."""

    def refuse(field: str, message: str) -> ApiError:
        return ApiError(400, "invalid import document", [{"field": field, "message": message}])

    if not isinstance(document, dict):
        raise refuse("$", f"must be an export document {{format: '{FORMAT}', templates: [...]}}")
    if document.get("format", FORMAT) != FORMAT:
        raise refuse("format", f"must be '{FORMAT}'")
    version = document.get("formatVersion", FORMAT_VERSION)
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise refuse("formatVersion", f"must be {FORMAT_VERSION}")
    templates = document.get("templates")
    if not isinstance(templates, list):
        raise refuse("templates", "must be a list of templates")
    if len(templates) > MAX_TEMPLATES:
        raise refuse("templates", f"has more than {MAX_TEMPLATES} templates")
    return templates


# Each template may spend the whole render budget before it is refused; a thousand such, in one
# document, would hold both render children for minutes.
IMPORT_CHECK_SECONDS = 20.0


def _echoed(raw: Any, field: str) -> str | None:
    """A template's own name or language for its result line, when it is text: anything else
    (a list nested 300 deep) could not even be written back in the answer."""
    value = raw.get(field) if isinstance(raw, dict) else None
    return value[:200] if isinstance(value, str) else None


class TransferApi:
    def __init__(self, ctx: Context, templates: TemplateApi) -> None:
        self.templates = templates
        self.cache = ctx.cache
        self.settings = ctx.settings

    def exported(self, request: web.Request) -> list[dict[str, Any]]:
        """The templates an export request names (every one without ``name``)."""
        name, language = request.query.get("name"), request.query.get("language")
        chosen = [
            t
            for t in self.cache.all()
            if (name is None or t["name"] == name)
            and (language is None or t["language"] == language)
        ]
        if name is not None and not chosen:
            raise ApiError(
                404, f"no template '{name}'" + (f" for language '{language}'" if language else "")
            )
        return chosen

    async def plan(
        self, templates: list[Any]
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Per template: (its result line, the validated template to write or None)."""
        out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + IMPORT_CHECK_SECONDS
        for i, raw in enumerate(templates):
            if time.monotonic() > deadline:
                message = (
                    f"checking took over {IMPORT_CHECK_SECONDS:g} s, at templates[{i}] of "
                    f"{len(templates)}; import the document in smaller parts"
                )
                raise ApiError(
                    400, "document too slow to check", [{"field": "templates", "message": message}]
                )
            line = {"name": _echoed(raw, "name"), "language": _echoed(raw, "language")}
            try:
                template = await self.templates.validated(raw, f"templates[{i}].")
            except ApiError as exc:
                if exc.status != 400:
                    raise
                out.append(({**line, "action": "refused", "details": exc.details}, None))
                continue
            key = (template["name"], template["language"])
            line = {"name": key[0], "language": key[1]}
            if key in seen:
                details = [{"field": f"templates[{i}].name", "message": "appears twice"}]
                out.append(({**line, "action": "refused", "details": details}, None))
                continue
            seen.add(key)
            current = self.cache.get(*key)
            if current is None:
                out.append(({**line, "action": "create"}, template))
            elif content(current.data) == content(template):
                out.append(({**line, "action": "unchanged", "version": current.version}, None))
            else:
                out.append(({**line, "action": "update"}, template))
        return out

    async def import_(self, request: web.Request, by: Principal) -> web.Response:
        dry_run = bool(query_bool(request, "dryRun"))
        document = await read_json(request, self.settings.api_max_body_bytes)
        plan = await self.plan(document_templates(document))
        results = [line for line, _ in plan]
        refused = any(line["action"] == "refused" for line in results)
        if not dry_run and not refused:
            for line, template in plan:
                if template is not None:
                    line["version"] = await self.apply(line["action"], template, by)
        body: dict[str, Any] = {
            "dryRun": dry_run,
            "results": results,
            "counts": {a: sum(1 for line in results if line["action"] == a) for a in ACTIONS},
        }
        if refused and not dry_run:
            body = {"error": "nothing imported: some templates are refused", **body}
            return json_response(body, status=400)
        return json_response(body)

    async def apply(self, action: str, template: dict[str, Any], by: Principal) -> int:
        """Write one template; the plan came from this worker's read model, which may lag, so
        a create that finds the template answers as a replace, and a replace that finds none
        as a create."""
        key = model.template_key(template["name"], template["language"])
        ops = ("create", "replace") if action == "create" else ("replace", "create")
        for op in ops:
            result = await self.templates.write(op, key, by, template=template, summary="imported")
            if result["status"] in (200, 201):
                return int(result["template"]["version"])
        raise ApiError(503, "the template store changed during the import; send it again")


def register(ctx: Context, templates: TemplateApi) -> None:
    app, api, gate = ctx.app, TransferApi(ctx, templates), Gate.of(ctx)

    @app.page("/api/templates/export", name="templates_export")
    class TemplatesExport(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            await gate.admit(request, READ)
            chosen = api.exported(request)
            items = (content(t) for t in chosen)
            return await json_stream(request, export_header(), "templates", items)

    @app.page("/api/templates/import", name="templates_import")
    class TemplatesImport(faust.web.View):
        async def post(self, request: web.Request) -> web.Response:
            by = await gate.admit(request, IMPORT)
            return await api.import_(request, by)

    @app.page("/api/whoami", name="whoami")
    class WhoAmI(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return json_response(gate.who(request).to_dict())
