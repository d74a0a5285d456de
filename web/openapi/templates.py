"""Templates: the schemas (what :mod:`app.core.templates` takes and the writer stores) and the
operations of ``web/templates.py`` and ``web/template_io.py``."""

from __future__ import annotations

from typing import Any

from app.core import templates as model
from app.core.access import EDIT, IMPORT, READ
from app.flows.templates import CONTENT_FIELDS
from web import template_io
from web.openapi.base import (
    ERROR,
    FLAG,
    JSON,
    LOADING,
    NOT_BLANK,
    Limits,
    Operation,
    Refusal,
    anchored,
    answer,
    beyond,
    body_errors,
    closed,
    json_body,
    or_default,
    path,
    query,
    ref,
)
from web.templates import STATUSES

TEMPLATE, TEMPLATE_IN, PREVIEW = ref("Template"), ref("TemplateInput"), ref("Preview")
NAME_SCHEMA = {"type": "string", "pattern": anchored(model.NAME_RE)}
LANGUAGE_SCHEMA = {"type": "string", "pattern": anchored(model.LANGUAGE_RE)}
TIME = {"type": "string", "format": "date-time"}
TEXT_OR_NULL = {"type": ["string", "null"]}
VERSION = {"type": "integer", "minimum": 1}

NAME = path("name", NAME_SCHEMA, description=model.NAME_RULE, example="otpMail")
DRAFT = query("draft", FLAG, "true: the template's draft instead of its published version")
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the ETag the template was read with, or *: the write is refused with 412 "
    "if the template has been written since (a draft saved included), so an editor's change "
    "never overwrites another's",
}
#: The ETag of the template's row, on every answer about one.
ETAG = {
    "ETag": {
        "description": "changes with every write of the template, drafts included, and tells "
        "a template re-created after a delete from the one before: give it back in If-Match",
        "schema": {"type": "string", "pattern": '^"[0-9]+-[0-9]*"$'},
    }
}
CHANGED = {412: "If-Match does not name the template as it is: it changed since it was read"}
VERSION_PARAM = path("version", {**VERSION, "maximum": 2**31 - 1}, example=1)

# --------------------------------------------------------------------------- refusals

#: A number JSON allows but no 64-bit float holds (the server reads JSON with orjson).
HUGE_NUMBER = Refusal(
    "a JSON number must fit in a 64-bit float (about 1.8e308)",
    r"\$",
    "number is infinity when parsed as double.*",
)
#: check_fields' own messages for the subject and body: schema rules, never refusals here.
NOT_A_FIELD_RULE = r"(?!is required|is longer than|must be ).+"
#: Refusals of a template the schemas admit: create, replace, clone, import, unsaved preview.
TEMPLATE_REFUSALS = (
    Refusal(
        "the subject and body must compile (the Thymeleaf subset or Jinja2, sandboxed: no "
        "reach into Python internals, bounded nesting) and render with sample data within the "
        "render budget (time, loop iterations, output size; the message names the limit)",
        "subject|body",
        NOT_A_FIELD_RULE,
    ),
    Refusal(
        "every mandatory parameter must be used by the subject or the body",
        "params",
        "mandatory parameter '.+' is not used by the subject or body",
    ),
    Refusal("parameter keys must be unique", r"params\[\d+\]\.key", "duplicates '.+'"),
    Refusal(
        "otpValue, the code, can only be typed STRING",
        r"params\[\d+\]\.type",
        r"must be STRING for otpValue \(the code\)",
    ),
    Refusal(
        f"context may nest at most {model.MAX_CONTEXT_DEPTH} levels deep",
        "context",
        f"is nested more than {model.MAX_CONTEXT_DEPTH} levels deep",
    ),
)
TYPES = "|".join(model.PARAM_TYPES)
#: Refusals of preview data the schemas admit: they depend on the template rendered.
DATA_REFUSALS = (
    Refusal(
        "data must carry every mandatory parameter of the template, not null or empty",
        r"data\..+",
        "is mandatory",
    ),
    Refusal(
        "a value in data must be of its parameter's declared type",
        r"data\..+",
        f"(?:item \\d+ )?must be an? (?:{TYPES})",
    ),
    Refusal(
        "the template must render with this data, within the render budget",
        "subject|body|data",
        "(?!must be an object).+",
    ),
)


# --------------------------------------------------------------------------- schemas


def _param_input() -> dict[str, Any]:
    """``params[]`` as ``app.core.templates._params`` takes it: ``item`` only for an ARRAY."""
    key = {"type": "string", "pattern": anchored(model.PARAM_KEY_RE)}
    mandatory = {"type": "boolean", "default": False}
    plain = [t for t in model.PARAM_TYPES if t != "ARRAY"]
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": key,
                    "mandatory": mandatory,
                    "type": {"enum": [*plain, None], "description": "absent or null: untyped"},
                    "item": {"type": "null"},
                },
            },
            {
                "type": "object",
                "required": ["key", "type"],
                "properties": {
                    "key": key,
                    "mandatory": mandatory,
                    "type": {"const": "ARRAY"},
                    "item": {
                        "enum": [*model.PARAM_TYPES, None],
                        "description": "the type of every item; absent or null: any",
                    },
                },
            },
        ],
        "description": "Unknown fields are dropped.",
    }


def _stored_fields(lim: Limits) -> dict[str, Any]:
    """A template as the writer stores it (what every read answers), without server fields."""
    subject = {"type": "string", "maxLength": model.MAX_SUBJECT_CHARS, "pattern": "^[^\\n\\r]*$"}
    param = closed(
        {
            "key": {"type": "string", "pattern": anchored(model.PARAM_KEY_RE)},
            "mandatory": {"type": "boolean"},
            "type": {"enum": list(model.PARAM_TYPES)},
            "item": {"enum": list(model.PARAM_TYPES)},
        },
        optional=("type", "item"),
    )
    return {
        "name": NAME_SCHEMA,
        "type": {"enum": list(model.TYPES)},
        "strategyType": {"type": ["string", "null"], "maxLength": 100},
        "active": {"type": "boolean"},
        "forwardOnKafka": {"type": "boolean"},
        "language": LANGUAGE_SCHEMA,
        "subject": {"anyOf": [subject, {"type": "null"}]},
        "body": {"type": "string", "maxLength": lim.max_body_chars, "pattern": NOT_BLANK},
        "context": {"type": "array"},
        "params": {"type": "array", "items": param},
    }


def _template_inputs(lim: Limits) -> dict[str, Any]:
    """``TemplateInput``: one of a MAIL template (a subject required) or an SMS/PUSH one. A
    oneOf on the type rather than if/then: the same rule, and schemathesis generates for it
    ten times faster."""
    subject = {"type": "string", "maxLength": model.MAX_SUBJECT_CHARS, "pattern": "^[^\\n\\r]*$"}
    one_line = f"one line of at most {model.MAX_SUBJECT_CHARS} characters"
    language = or_default(LANGUAGE_SCHEMA, f"{lim.default_language} (TEMPLATE_DEFAULT_LANGUAGE)")
    language["description"] = f"a tag such as 'en' or 'pt-BR'; {language['description']}"
    fields = {
        "name": {**NAME_SCHEMA, "description": model.NAME_RULE},
        "strategyType": {"type": ["string", "null"], "maxLength": 100},
        "active": {"type": "boolean", "default": True},
        "forwardOnKafka": {
            "type": "boolean",
            "default": False,
            "description": "notifications go to KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT for an "
            "external adapter instead of being sent",
        },
        "language": language,
        "body": {
            "type": "string",
            "maxLength": lim.max_body_chars,
            "pattern": NOT_BLANK,
            "description": "Thymeleaf subset ([(${x})], [[${x}]], th:text, th:utext, th:if, "
            "th:unless, th:each) or Jinja2 ({{ x }}); otpValue is injected by the service. "
            f"At most {lim.max_body_chars} characters (TEMPLATE_MAX_BODY_CHARS), not blank.",
        },
        "context": {
            "type": ["array", "null"],
            "description": "free-form JSON, stored as sent (null: [])",
        },
        "params": {"type": ["array", "null"], "maxItems": model.MAX_PARAMS, "items": ref("Param")},
    }

    def template_input(types: list[str], subject_schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "description": "Unknown fields are dropped, not refused (FlowX clients send extra "
            "keys).",
            "required": ["name", "type", "body", *(["subject"] if "MAIL" in types else [])],
            "properties": {"type": {"enum": types}, "subject": subject_schema, **fields},
        }

    inputs = {
        "MailTemplateInput": template_input(
            ["MAIL"], {**subject, "description": f"{one_line}; required"}
        ),
        "TextTemplateInput": template_input(
            [t for t in model.TYPES if t != "MAIL"],
            {"anyOf": [subject, {"type": "null"}], "description": one_line},
        ),
    }
    # No discriminator: the types already tell the branches apart, and with one (SMS and PUSH
    # mapped to one schema) schemathesis 4.32.5 reported a valid SMS body as schema-violating
    # ("violates enum at /oneOf/1/allOf/1/properties/type", ST201).
    return {
        "TemplateInput": {
            "oneOf": [ref(name) for name in inputs],
            "description": "A MAIL template (a subject required) or an SMS or PUSH one.",
        },
        **inputs,
        "Param": _param_input(),
    }


def _history_schemas(stored: dict[str, Any]) -> dict[str, Any]:
    server = {"version": VERSION, "createdAt": TIME, "updatedAt": TIME}
    change = {
        "changedBy": {**TEXT_OR_NULL, "description": "the name of the token that made it"},
        "summary": {**TEXT_OR_NULL, "description": "what changed, in a few words"},
        "current": {"type": "boolean", "description": "the published version"},
    }
    return {
        "Template": closed({**stored, **server}),
        "TemplateListed": closed({**stored, **server, "hasDraft": {"type": "boolean"}}),
        "Draft": closed(
            {
                **stored,
                "savedAt": TIME,
                "savedBy": {**TEXT_OR_NULL, "description": "the name of the token"},
                "baseVersion": {**VERSION, "description": "the version it was saved over"},
            }
        ),
        "Version": closed({**stored, **server, **change}),
        "VersionSummary": closed(
            {"version": VERSION, "updatedAt": TIME, **change},
        ),
    }


def _preview_schemas() -> dict[str, Any]:
    data = {"type": "object", "description": "template parameters; otpValue is set by the service"}
    return {
        "PreviewRequest": {
            "type": "object",
            "example": {"data": {"clientId": "42"}},
            "properties": {"data": data},
        },
        "UnsavedPreviewRequest": {
            "type": "object",
            "required": ["template"],
            "properties": {"template": TEMPLATE_IN, "data": data},
        },
        "Preview": closed(
            {
                "name": NAME_SCHEMA,
                "language": LANGUAGE_SCHEMA,
                "type": {"enum": list(model.TYPES)},
                "version": {
                    **VERSION,
                    "type": ["integer", "null"],
                    "description": "null for a draft or an unsaved template",
                },
                "subject": TEXT_OR_NULL,
                "body": {"type": "string"},
                "text": {
                    **TEXT_OR_NULL,
                    "description": "the plain-text alternative of a MAIL body; null otherwise",
                },
                "otpValue": {"type": "string", "description": "the sample code rendered"},
            }
        ),
    }


def _transfer_schemas(stored: dict[str, Any]) -> dict[str, Any]:
    exported = closed({k: stored[k] for k in ("name", "language", *CONTENT_FIELDS)})
    detail = ref("Detail")
    line = {
        "type": "object",
        "required": ["name", "language", "action"],
        "additionalProperties": False,
        "properties": {
            "name": {"description": "as the document gave it (refused: any JSON, or null)"},
            "language": {"description": "as the document gave it, or the default"},
            "action": {"enum": list(template_io.ACTIONS)},
            "version": {**VERSION, "description": "the version written, or left unchanged"},
            "details": {"type": "array", "items": detail, "description": "why it is refused"},
        },
    }
    counts = closed({a: {"type": "integer", "minimum": 0} for a in template_io.ACTIONS})
    result = {
        "dryRun": {"type": "boolean"},
        "results": {"type": "array", "items": line},
        "counts": counts,
    }
    return {
        "Export": closed(
            {
                "format": {"const": template_io.FORMAT},
                "formatVersion": {"const": template_io.FORMAT_VERSION},
                "exportedAt": TIME,
                "templates": {"type": "array", "items": exported},
            }
        ),
        "ImportDocument": {
            "type": "object",
            "required": ["templates"],
            "description": "An Export (other fields are ignored).",
            "properties": {
                "format": {"const": template_io.FORMAT},
                "formatVersion": {"const": template_io.FORMAT_VERSION},
                "templates": {
                    "type": "array",
                    "maxItems": template_io.MAX_TEMPLATES,
                    "items": {
                        "description": "a template as POST /api/template takes it "
                        "(TemplateInput), checked as that POST checks it: one it refuses is "
                        "reported with its details, not refused here"
                    },
                },
            },
        },
        "ImportResult": closed(result),
        "ImportRefused": closed({"error": {"type": "string"}, **result}),
        "CloneRequest": {
            "type": "object",
            "description": "Either may be left out (or null: the source's), not both.",
            "example": {"language": "ro"},
            "properties": {
                "name": or_default(NAME_SCHEMA, "the source's name"),
                "language": or_default(LANGUAGE_SCHEMA, "the source's language"),
            },
        },
    }


def schemas(lim: Limits) -> dict[str, Any]:
    stored = _stored_fields(lim)
    return {
        **_template_inputs(lim),
        **_history_schemas(stored),
        **_preview_schemas(),
        **_transfer_schemas(stored),
    }


# --------------------------------------------------------------------------- operations

NOT_FOUND = "no template with this name and language"
BUSY = f"{LOADING}; or every template renderer is busy"
ITEM_LINKS = {
    op: {
        "operationId": op,
        "parameters": {"name": "$response.body#/name", "language": "$response.body#/language"},
    }
    for op in (
        "getTemplate",
        "replaceTemplate",
        "deleteTemplate",
        "previewTemplate",
        "publishDraft",
        "listVersions",
        "cloneTemplate",
    )
}


def _language(lim: Limits) -> dict[str, Any]:
    return query(
        "language",
        {"type": "string", "pattern": f"^$|{anchored(model.LANGUAGE_RE)}"},
        f"empty or absent: {lim.default_language} (TEMPLATE_DEFAULT_LANGUAGE)",
    )


def collection_operations(lim: Limits) -> list[Operation]:
    listing = closed(
        {
            "items": {"type": "array", "items": ref("TemplateListed")},
            "count": {"type": "integer", "minimum": 0},
        }
    )
    return [
        Operation(
            "get",
            "/api/template",
            "listTemplates",
            "List published templates (each saying whether it has a draft), filtered",
            answers={200: answer(listing, "the matching templates")},
            errors={400: "an invalid type, status or active filter", 503: LOADING},
            parameters=(
                query("type", {"enum": list(model.TYPES)}, "only this type"),
                query("language", {"type": "string"}, "only this language (exactly)"),
                query("active", FLAG, "only active or inactive ones"),
                query("status", {"enum": list(STATUSES)}, "active, inactive, or with a draft"),
                query("name", {"type": "string"}, "only names containing this (any case)"),
            ),
            scope=READ,
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template",
            "createTemplate",
            "Create a template: version 1, live at once",
            answers={201: answer(TEMPLATE, "created", links=ITEM_LINKS, headers=ETAG)},
            errors={
                400: "an invalid template (details name each field and why)",
                409: "a template with this name and language exists (use PUT)",
                **body_errors(lim),
                503: BUSY,
            },
            body=json_body(TEMPLATE_IN, lim.max_body_bytes),
            scope=EDIT,
            beyond_schema=(*TEMPLATE_REFUSALS, HUGE_NUMBER),
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/preview",
            "previewUnsaved",
            "Render a template that is not stored (the console's live preview)",
            answers={200: answer(PREVIEW, "rendered (version null)")},
            errors={400: "an invalid template or preview data", **body_errors(lim), 503: BUSY},
            body=json_body(ref("UnsavedPreviewRequest"), lim.max_body_bytes),
            scope=READ,
            beyond_schema=(
                *(r.under(r"template\.") for r in TEMPLATE_REFUSALS),
                *DATA_REFUSALS,
                HUGE_NUMBER,
            ),
            tags=("templates",),
        ),
    ]


def item_operations(lim: Limits) -> list[Operation]:
    language = _language(lim)
    either = {"oneOf": [TEMPLATE, ref("Draft")]}
    no_draft = f"{NOT_FOUND}, or (draft=true) it has no draft"
    return [
        Operation(
            "get",
            "/api/template/{name}",
            "getTemplate",
            "Read a template: its published version, or its draft",
            answers={200: answer(either, "the template (a Draft with draft=true)", headers=ETAG)},
            errors={400: "an invalid name, language or draft flag", 404: no_draft, 503: LOADING},
            parameters=(NAME, language, DRAFT),
            scope=READ,
            tags=("templates",),
        ),
        Operation(
            "put",
            "/api/template/{name}",
            "replaceTemplate",
            "Replace a template (version + 1, live at once), or save its draft (draft=true: "
            "sends keep the published one); the URL's name and language win over the body's",
            answers={
                200: answer(
                    either, "replaced (the Draft with draft=true)", links=ITEM_LINKS, headers=ETAG
                )
            },
            errors={
                400: "an invalid name, language, draft flag or template",
                404: NOT_FOUND,
                **body_errors(lim),
                **CHANGED,
                503: BUSY,
            },
            parameters=(NAME, language, DRAFT, IF_MATCH),
            body=json_body(TEMPLATE_IN, lim.max_body_bytes),
            scope=EDIT,
            beyond_schema=(*TEMPLATE_REFUSALS, HUGE_NUMBER),
            tags=("templates",),
        ),
        Operation(
            "delete",
            "/api/template/{name}",
            "deleteTemplate",
            "Delete a template with its draft and history, or (draft=true) discard its draft",
            answers={
                204: {
                    "description": "deleted (the template's ETag if only its draft was)",
                    "headers": ETAG,
                }
            },
            errors={
                400: "an invalid name, language or draft flag",
                404: no_draft,
                **CHANGED,
                503: LOADING,
            },
            parameters=(NAME, language, DRAFT, IF_MATCH),
            scope=EDIT,
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template/{name}/preview",
            "previewTemplate",
            "Render a stored template (or its draft) with sample data, exactly as a send would",
            answers={200: answer(PREVIEW, "rendered (version null for a draft)")},
            errors={
                400: "an invalid name, language, draft flag or preview request",
                404: no_draft,
                **body_errors(lim),
                503: BUSY,
            },
            parameters=(NAME, language, DRAFT),
            body=json_body(ref("PreviewRequest"), lim.max_body_bytes),
            scope=READ,
            beyond_schema=(*DATA_REFUSALS, HUGE_NUMBER),
            tags=("templates",),
        ),
    ]


def lifecycle_operations(lim: Limits) -> list[Operation]:
    language = _language(lim)
    versions = closed(
        {
            "items": {"type": "array", "items": ref("VersionSummary")},
            "count": {"type": "integer", "minimum": 0},
        }
    )
    unknown_version = f"{NOT_FOUND}, or no such version in its history"
    return [
        Operation(
            "post",
            "/api/template/{name}/publish",
            "publishDraft",
            "Publish the template's draft: version + 1, live at once",
            answers={200: answer(TEMPLATE, "published", headers=ETAG)},
            errors={
                400: "an invalid name or language",
                404: NOT_FOUND,
                409: "the template has no draft",
                **CHANGED,
                503: LOADING,
            },
            parameters=(NAME, language, IF_MATCH),
            scope=EDIT,
            tags=("templates",),
        ),
        Operation(
            "get",
            "/api/template/{name}/versions",
            "listVersions",
            "The template's history, newest first",
            answers={200: answer(versions, "the versions kept")},
            errors={400: "an invalid name or language", 404: NOT_FOUND, 503: LOADING},
            parameters=(NAME, language),
            scope=READ,
            tags=("templates",),
        ),
        Operation(
            "get",
            "/api/template/{name}/versions/{version}",
            "getVersion",
            "One version of the template, with who changed it and how",
            answers={200: answer(ref("Version"), "the version")},
            errors={
                400: "an invalid name, language or version",
                404: unknown_version,
                503: LOADING,
            },
            parameters=(NAME, VERSION_PARAM, language),
            scope=READ,
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template/{name}/versions/{version}/restore",
            "restoreVersion",
            "Publish an earlier version's content again: version + 1, live at once",
            answers={200: answer(TEMPLATE, "restored", headers=ETAG)},
            errors={
                400: "an invalid name, language or version",
                404: unknown_version,
                **CHANGED,
                503: LOADING,
            },
            parameters=(NAME, VERSION_PARAM, language, IF_MATCH),
            scope=EDIT,
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template/{name}/clone",
            "cloneTemplate",
            "Copy a template's content under another name and/or language: version 1",
            answers={201: answer(TEMPLATE, "the copy", links=ITEM_LINKS, headers=ETAG)},
            errors={
                400: "an invalid name, language or clone request",
                404: NOT_FOUND,
                409: "the copy's name and language exist",
                **body_errors(lim),
                503: BUSY,
            },
            parameters=(NAME, language),
            body=json_body(ref("CloneRequest"), lim.max_body_bytes),
            scope=EDIT,
            beyond_schema=(
                Refusal(
                    "the copy must differ from its source in name or language",
                    "name",
                    "give another name, language, or both",
                ),
                HUGE_NUMBER,
            ),
            tags=("templates",),
        ),
    ]


#: A non-dry import refused for templates it reports refused: the details are theirs.
IMPORT_REFUSAL = Refusal(
    "each template is checked as POST /api/template checks it (TemplateInput and the rules "
    "beyond it), and a name and language may appear once: one refused (its result says why) "
    "refuses the whole import, unless dryRun",
    r"templates\[\d+\](?:\..+)?",
    ".+",
)


def transfer_operations(lim: Limits) -> list[Operation]:
    refused = {
        "content": {JSON: {"schema": {"oneOf": [ERROR, ref("ImportRefused")]}}},
        **beyond(
            "an invalid document (Error), or, unless dryRun, refused templates: nothing "
            "is imported (ImportRefused, each refused template's result says why)",
            (IMPORT_REFUSAL, HUGE_NUMBER),
        ),
    }
    return [
        Operation(
            "get",
            "/api/templates/export",
            "exportTemplates",
            "Every template's content (no versions, times or history) as one document",
            answers={200: answer(ref("Export"), "the export document")},
            errors={404: "no template by this name (and language)", 503: LOADING},
            parameters=(
                query("name", {"type": "string"}, "only this template"),
                query("language", {"type": "string"}, "only this language"),
            ),
            scope=READ,
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/templates/import",
            "importTemplates",
            "Create or update the templates of an export document, all or none",
            description="Each template is written as a new version, one after another: an "
            "import interrupted by an outage leaves those written so far, and sending the "
            "document again finishes it.",
            answers={
                200: answer(ref("ImportResult"), "what was (dryRun: would be) done, per template"),
                400: refused,
            },
            errors={
                **body_errors(lim),
                503: f"{BUSY}; or the template store changed during the import: send it again",
            },
            parameters=(query("dryRun", FLAG, "true: only say what would be done"),),
            body=json_body(ref("ImportDocument"), lim.max_body_bytes),
            scope=IMPORT,
            tags=("templates",),
        ),
    ]


def operations(lim: Limits) -> list[Operation]:
    return [
        *collection_operations(lim),
        *item_operations(lim),
        *lifecycle_operations(lim),
        *transfer_operations(lim),
    ]
