"""The notification template model: validate what an operator sends, before anything is stored.

Pure (no Faust, no HTTP): the REST views call it (through :mod:`app.render_pool`, in a child
process under a hard time limit), and so do the tests, directly. A template is refused at save
time for everything that would otherwise fail later, at send time, in front of a user: a body
that does not compile, a mandatory parameter the body never uses (FlowX refuses those too), a
reach into Python internals, a render that runs over its budget (:func:`trial_render`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app import codec
from app.core import render

TYPES = ("MAIL", "SMS", "PUSH")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# At most four subtags (``zh-Hant-TW`` has two, 39 characters in all): a language is part of a
# template's URL (``?language=``), and an unbounded one made a template no URL could reach.
LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8}){0,4}")
PARAM_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
SERVER_FIELDS = ("version", "createdAt", "updatedAt")
MAX_SUBJECT_CHARS = render.MAX_SUBJECT_CHARS  # RFC 5322 line length
MAX_PARAMS = 100
# ``context`` is free-form JSON stored as sent; bound its nesting so that every encoder on the
# way (Faust's and ours, orjson: at most 254 levels) can serialize it: deeper was a 500.
MAX_CONTEXT_DEPTH = 32
#: ``params[].type``: what a send's value for the parameter must be (optional, unchecked if absent).
PARAM_TYPES = ("STRING", "NUMBER", "BOOLEAN", "OBJECT", "ARRAY")
NAME_RULE = "must be 1-100 characters of A-Z a-z 0-9 _ . - (starting with a letter or digit)"


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class TemplateInvalid(ValueError):
    """The template cannot be stored; ``problems`` says which fields and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


def or_default(value: Any, default: str) -> Any:
    """Absent, null or "" is ``default``; any other value is kept, to be checked (``false`` is
    not a language)."""
    return default if value is None or value == "" else value


def template_key(name: str, language: str) -> str:
    """The table key; ':' cannot occur in a valid name or language."""
    return f"{name}:{language}"


def is_html(template_type: str) -> bool:
    """MAIL bodies are HTML (escaped output); SMS and PUSH bodies are plain text."""
    return template_type == "MAIL"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TemplateInvalid(
            [
                Problem(
                    "name",
                    NAME_RULE,
                )
            ]
        )
    return name


def check_language(language: Any, field: str = "language") -> str:
    if not isinstance(language, str) or not LANGUAGE_RE.fullmatch(language):
        raise TemplateInvalid([Problem(field, "must be a language tag such as 'en' or 'pt-BR'")])
    return language


def validate(
    payload: Any,
    *,
    default_language: str,
    max_body_chars: int,
    limits: render.RenderLimits = render.DEFAULT_LIMITS,
) -> tuple[dict[str, Any], render.CompiledTemplate]:
    """Check a POST/PUT body; return the template as stored (without server fields) and compiled.

    Collects every field problem before answering, so an operator fixes a body in one round.
    Unknown fields are dropped rather than refused: FlowX clients send extra keys. ``limits``
    bounds the compile; :func:`trial_render` is the render-time half of the budget check.
    """
    template = check_fields(
        payload, default_language=default_language, max_body_chars=max_body_chars
    )
    html = is_html(template["type"])
    try:
        compiled = render.compile_template(
            template["subject"], template["body"], html=html, limits=limits
        )
    except render.TemplateError as exc:
        raise TemplateInvalid([Problem(exc.field, str(exc))]) from None
    unused = render.unused_mandatory(template["params"], compiled)
    if unused:
        raise TemplateInvalid(
            [
                Problem("params", f"mandatory parameter '{key}' is not used by the subject or body")
                for key in unused
            ]
        )
    return template, compiled


def check_fields(payload: Any, *, default_language: str, max_body_chars: int) -> dict[str, Any]:
    """The part of :func:`validate` that compiles nothing: field types, sizes and shapes.

    Cheap and linear in the body's size, so the API runs it in the worker before a template
    goes to a renderer process; what it returns is plain JSON that any encoder can carry
    (``context`` nesting bounded), whatever the client sent.
    """
    if not isinstance(payload, dict):
        raise TemplateInvalid([Problem("$", "the body must be a JSON object")])
    problems: list[Problem] = []

    def want(cond: bool, field: str, message: str) -> bool:
        if not cond:
            problems.append(Problem(field, message))
        return cond

    name = payload.get("name")
    want(
        isinstance(name, str) and bool(NAME_RE.fullmatch(name)),
        "name",
        f"is required: {NAME_RULE.removeprefix('must be ')}",
    )
    ttype = payload.get("type")
    want(ttype in TYPES, "type", f"is required: one of {', '.join(TYPES)}")
    strategy = payload.get("strategyType")
    want(
        strategy is None or (isinstance(strategy, str) and len(strategy) <= 100),
        "strategyType",
        "must be a string of at most 100 characters or null",
    )
    active = payload.get("active", True)
    want(isinstance(active, bool), "active", "must be true or false")
    # FlowX's "Forward on Kafka": notifications are handed to an external adapter, not sent.
    forward = payload.get("forwardOnKafka", False)
    want(isinstance(forward, bool), "forwardOnKafka", "must be true or false")
    language = or_default(payload.get("language"), default_language)
    want(
        isinstance(language, str) and bool(LANGUAGE_RE.fullmatch(language)),
        "language",
        "must be a language tag such as 'en' or 'pt-BR'",
    )
    subject = payload.get("subject")
    if want(subject is None or isinstance(subject, str), "subject", "must be a string or null"):
        if isinstance(subject, str):
            want(
                len(subject) <= MAX_SUBJECT_CHARS,
                "subject",
                f"is longer than {MAX_SUBJECT_CHARS} characters",
            )
            want("\r" not in subject and "\n" not in subject, "subject", "must be one line")
        elif ttype == "MAIL":
            problems.append(Problem("subject", "is required for MAIL templates"))
    body = payload.get("body")
    if want(
        isinstance(body, str) and body.strip() != "", "body", "is required (a non-empty string)"
    ):
        want(
            len(body) <= max_body_chars,
            "body",
            f"is longer than the {max_body_chars}-character limit",
        )
    context = payload.get("context", [])
    if want(context is None or isinstance(context, list), "context", "must be a list"):
        want(
            codec.depth(context) <= MAX_CONTEXT_DEPTH,
            "context",
            f"is nested more than {MAX_CONTEXT_DEPTH} levels deep",
        )
    params = _params(payload.get("params", []), problems)
    if problems:
        raise TemplateInvalid(problems)
    return {
        "name": name,
        "type": ttype,
        "strategyType": strategy,
        "active": active,
        "forwardOnKafka": forward,
        "language": language,
        "subject": subject,
        "body": body,
        "context": context or [],
        "params": params,
    }


#: What a trial render puts in every mandatory parameter, and the code it shows.
SAMPLE_VALUE = "sample"
SAMPLE_OTP = "1234567890"


def sample_data(params: list[dict[str, Any]], otp_length: int) -> dict[str, Any]:
    """The data of a trial render: mandatory parameters set, ``otpValue`` a sample code."""
    data: dict[str, Any] = {p["key"]: SAMPLE_VALUE for p in params if p.get("mandatory")}
    data["otpValue"] = SAMPLE_OTP[: max(1, otp_length)]
    return data


def trial_render(
    template: dict[str, Any],
    compiled: render.CompiledTemplate,
    *,
    limits: render.RenderLimits,
    otp_length: int,
) -> None:
    """Render a validated template once with sample data; refuse it if that runs over budget.

    Only budget errors (time, loop iterations, output size, a refused method, text that is not
    valid Unicode) refuse the template: they do not depend on the data's shape, so the template
    would fail every send. Other render errors (an undefined nested value the sample data lacks)
    are the data's business and are reported at send time, as before.
    """
    try:
        render.render(compiled, sample_data(template["params"], otp_length), limits=limits)
    except render.RenderBudgetError as exc:
        raise TemplateInvalid([Problem(exc.field, str(exc))]) from None
    except render.RenderError:
        return


def _params(value: Any, problems: list[Problem]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(Problem("params", "must be a list of {key, mandatory} objects"))
        return []
    if len(value) > MAX_PARAMS:
        problems.append(Problem("params", f"has more than {MAX_PARAMS} entries"))
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        field = f"params[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(field, "must be an object {key, mandatory}"))
            continue
        key = item.get("key")
        mandatory = item.get("mandatory", False)
        if not isinstance(key, str) or not PARAM_KEY_RE.fullmatch(key):
            problems.append(Problem(f"{field}.key", "must be an identifier (letters, digits, _)"))
            continue
        if key in seen:
            problems.append(Problem(f"{field}.key", f"duplicates '{key}'"))
            continue
        if not isinstance(mandatory, bool):
            problems.append(Problem(f"{field}.mandatory", "must be true or false"))
            continue
        typed = _param_type(item, field, problems)
        if typed is None:
            continue
        seen.add(key)
        out.append({"key": key, "mandatory": mandatory, **typed})
    return out


def _param_type(item: dict[str, Any], field: str, problems: list[Problem]) -> dict[str, Any] | None:
    """``type`` (and ``item`` for an ARRAY) as stored, ``{}`` when untyped, None if refused."""
    ptype, item_type = item.get("type"), item.get("item")
    if ptype is None:
        if item_type is not None:
            problems.append(Problem(f"{field}.item", "is only for a parameter of type ARRAY"))
            return None
        return {}
    if ptype not in PARAM_TYPES or (item.get("key") == "otpValue" and ptype != "STRING"):
        message = (
            "must be STRING for otpValue (the code)"
            if ptype in PARAM_TYPES
            else f"must be one of {', '.join(PARAM_TYPES)}"
        )
        problems.append(Problem(f"{field}.type", message))
        return None
    if item_type is not None and (ptype != "ARRAY" or item_type not in PARAM_TYPES):
        message = (
            f"must be one of {', '.join(PARAM_TYPES)}"
            if ptype == "ARRAY"
            else "is only for a parameter of type ARRAY"
        )
        problems.append(Problem(f"{field}.item", message))
        return None
    return {"type": ptype, **({"item": item_type} if item_type is not None else {})}


def _fits(value: Any, ptype: str) -> bool:
    if ptype == "NUMBER":
        return isinstance(value, int | float) and not isinstance(value, bool)
    python = {"STRING": str, "BOOLEAN": bool, "OBJECT": dict, "ARRAY": list}[ptype]
    return isinstance(value, python)


def mistyped(params: list[dict[str, Any]], data: dict[str, Any]) -> list[tuple[str, str]]:
    """(parameter, why) for each value in ``data`` that does not fit its declared type.

    Absent and null values are :func:`app.core.render.missing_mandatory`'s business, so an
    optional parameter may still be left out.
    """
    out: list[tuple[str, str]] = []
    for param in params:
        ptype, key = param.get("type"), param["key"]
        value = data.get(key)
        if ptype is None or value is None:
            continue
        if not _fits(value, ptype):
            out.append((key, f"must be {_article(ptype)}"))
        elif ptype == "ARRAY" and param.get("item"):
            bad = next((i for i, v in enumerate(value) if not _fits(v, param["item"])), None)
            if bad is not None:
                out.append((key, f"item {bad} must be {_article(param['item'])}"))
    return out


def _article(ptype: str) -> str:
    return f"an {ptype}" if ptype[0] in "AEIOU" else f"a {ptype}"
