"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /api/openapi.json``."""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web

from web.errors import json_response
from web.http import authorize

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "invalid request (details name the field and why; a template over its render "
        "budget names the limit)",
        401: "missing or wrong bearer token",
        404: "no such template, or no code for the clientId",
        409: "a template with this name and language exists, or the code is not pending",
        413: "body over the size limit (API_MAX_BODY_BYTES)",
        415: "body is not application/json",
        503: "the template or OTP store did not answer in time, or every template renderer is busy",
    }
    return {
        str(c): {"description": reasons[c], "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


CLIENT_ID = {
    "name": "clientId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 200},
}
OTP_STATUS = {
    "type": "object",
    "properties": {
        "clientId": {"type": "string"},
        "status": {"enum": ["pending", "approved", "expired", "max_attempts_reached", "canceled"]},
        "channel": {"type": "string"},
        "receiver": {"type": ["string", "null"], "description": "masked"},
        "processInstanceId": {},
        "issuedAt": {"type": "string", "format": "date-time"},
        "expiresAt": {"type": "string", "format": "date-time"},
        "attempts": {"type": "integer"},
        "attemptsRemaining": {"type": "integer"},
        "sendsInWindow": {"type": "integer"},
        "maxSends": {"type": "integer"},
    },
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
}
LANGUAGE = {
    "name": "language",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "defaults to TEMPLATE_DEFAULT_LANGUAGE",
}
TEMPLATE = {"$ref": "#/components/schemas/Template"}
TEMPLATE_IN = {"$ref": "#/components/schemas/TemplateInput"}


def document(max_body_bytes: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "faust-otp notification templates",
            "version": "1.0.0",
            "description": "Manage the notification templates OTPs are rendered into "
            f"(FlowX-compatible). Request bodies up to {max_body_bytes} bytes.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/template": {
                "get": {
                    "summary": "List templates",
                    "parameters": [
                        {
                            "name": "type",
                            "in": "query",
                            "schema": {"enum": ["MAIL", "SMS", "PUSH"]},
                        },
                        {"name": "language", "in": "query", "schema": {"type": "string"}},
                        {"name": "active", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": TEMPLATE},
                                    "count": {"type": "integer"},
                                },
                            },
                            "templates",
                        ),
                        **_errors(400, 401),
                    },
                },
                "post": {
                    "summary": "Create a template",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": TEMPLATE_IN}},
                    },
                    "responses": {
                        "201": _json(TEMPLATE, "created"),
                        **_errors(400, 401, 409, 413, 415, 503),
                    },
                },
            },
            "/api/template/{name}": {
                "parameters": [NAME, LANGUAGE],
                "get": {
                    "summary": "Read a template",
                    "responses": {"200": _json(TEMPLATE, "the template"), **_errors(400, 401, 404)},
                },
                "put": {
                    "summary": "Replace a template",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": TEMPLATE_IN}},
                    },
                    "responses": {
                        "200": _json(TEMPLATE, "replaced"),
                        **_errors(400, 401, 404, 413, 415, 503),
                    },
                },
                "delete": {
                    "summary": "Delete a template",
                    "responses": {"204": {"description": "deleted"}, **_errors(400, 401, 404, 503)},
                },
            },
            "/api/template/{name}/preview": {
                "parameters": [NAME, LANGUAGE],
                "post": {
                    "summary": "Render a template with sample data, exactly as a send would",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"data": {"type": "object"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "subject": {"type": ["string", "null"]},
                                    "body": {"type": "string"},
                                    "text": {"type": ["string", "null"]},
                                    "otpValue": {"type": "string"},
                                },
                            },
                            "rendered",
                        ),
                        **_errors(400, 401, 404, 413, 415, 503),
                    },
                },
            },
            "/api/otp/{clientId}": {
                "parameters": [CLIENT_ID],
                "get": {
                    "summary": "The identifier's current code: status, masked receiver, times, "
                    "attempts and sends in the window (never the code)",
                    "responses": {
                        "200": _json(OTP_STATUS, "the code"),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/api/otp/{clientId}/cancel": {
                "parameters": [CLIENT_ID],
                "post": {
                    "summary": "Cancel a pending code: later validates answer `code canceled`",
                    "responses": {
                        "200": _json(OTP_STATUS, "canceled"),
                        **_errors(400, 401, 404, 409, 503),
                    },
                },
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI document"}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Param": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": {"type": "string"},
                        "mandatory": {"type": "boolean", "default": False},
                    },
                },
                "TemplateInput": {
                    "type": "object",
                    "required": ["name", "type", "body"],
                    "properties": {
                        "name": NAME["schema"],
                        "type": {"enum": ["MAIL", "SMS", "PUSH"]},
                        "strategyType": {"type": ["string", "null"]},
                        "active": {"type": "boolean", "default": True},
                        "forwardOnKafka": {
                            "type": "boolean",
                            "default": False,
                            "description": "notifications go to KAFKA_TOPIC_NOTIFICATION_"
                            "EXTERNAL_OUT for an external adapter instead of being sent",
                        },
                        "language": {"type": "string"},
                        "subject": {"type": ["string", "null"], "description": "required for MAIL"},
                        "body": {
                            "type": "string",
                            "description": "Thymeleaf subset ([(${x})], [[${x}]], th:text, "
                            "th:utext, th:if, th:unless) or Jinja2 ({{ x }}); "
                            "otpValue is injected by the service",
                        },
                        "context": {"type": "array"},
                        "params": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Param"},
                        },
                    },
                },
                "Template": {
                    "allOf": [
                        TEMPLATE_IN,
                        {
                            "type": "object",
                            "properties": {
                                "version": {"type": "integer"},
                                "createdAt": {"type": "string", "format": "date-time"},
                                "updatedAt": {"type": "string", "format": "date-time"},
                            },
                        },
                    ]
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "details"],
                    "properties": {
                        "error": {"type": "string"},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }


def register(ctx: Any) -> None:
    settings = ctx.settings
    doc = document(settings.api_max_body_bytes)

    @ctx.app.page("/api/openapi.json", name="openapi")
    class OpenApi(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            authorize(request, ctx.access, settings.notify_api_auth == "enabled")
            return json_response(doc)
