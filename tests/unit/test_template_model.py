"""Unit tests of the template model (``app.core.templates.validate``) and of the writer's status
rules (``agents.templates.apply_command``): no Kafka, no HTTP."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from agents.templates import apply_command, public
from app.core import render
from app.core.templates import (
    TYPES,
    TemplateInvalid,
    check_language,
    check_name,
    template_key,
    validate,
)
from devtools.support import SEED_MAIL, SEED_SMS  # the FlowX "Generate OTP" templates, verbatim

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def check(payload: Any, *, max_body_chars: int = 1000) -> tuple[dict[str, Any], Any]:
    return validate(payload, default_language="en", max_body_chars=max_body_chars)


def problems(payload: Any, **kwargs: Any) -> list[dict[str, str]]:
    with pytest.raises(TemplateInvalid) as info:
        check(payload, **kwargs)
    found = [p.to_dict() for p in info.value.problems]
    assert found, "TemplateInvalid without problems"
    return found


def fields(payload: Any, **kwargs: Any) -> list[str]:
    return [p["field"] for p in problems(payload, **kwargs)]


def sms(**changes: Any) -> dict[str, Any]:
    """The seed SMS template with some fields changed (a value of ... removes the field)."""
    out = copy.deepcopy(SEED_SMS)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def mail(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SEED_MAIL)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- seeds


def test_seed_mail_accepted_verbatim() -> None:
    payload = copy.deepcopy(SEED_MAIL)
    template, compiled = check(payload)
    assert payload == SEED_MAIL  # validate does not mutate its input
    assert template == {**SEED_MAIL, "strategyType": None, "forwardOnKafka": False}
    assert compiled.html is True
    assert compiled.variables == frozenset({"clientId", "otpValue"})
    out = render.render(compiled, {"clientId": "1234567890", "otpValue": "123456"})
    assert out.subject == "otp for 1234567890"
    assert "<p>123456</p>" in out.body


def test_seed_sms_accepted_verbatim() -> None:
    template, compiled = check(copy.deepcopy(SEED_SMS))
    assert template == {**SEED_SMS, "forwardOnKafka": False}
    assert compiled.html is False
    assert render.render(compiled, {"otpValue": "123456"}).body == "OTP 123456"


def test_defaults_and_unknown_fields_dropped() -> None:
    template, _ = check({"name": "x", "type": "PUSH", "body": "hi", "extra": 1, "version": 7})
    assert template == {
        "name": "x",
        "type": "PUSH",
        "strategyType": None,
        "active": True,
        "forwardOnKafka": False,
        "language": "en",
        "subject": None,
        "body": "hi",
        "context": [],
        "params": [],
    }
    # server fields sent by a client are never taken over
    assert "version" not in template and "extra" not in template


# --------------------------------------------------------------------------- field problems


@pytest.mark.parametrize("payload", [None, [], "x", 1, True, [SEED_SMS]])
def test_body_must_be_an_object(payload: Any) -> None:
    assert problems(payload) == [{"field": "$", "message": "the body must be a JSON object"}]


@pytest.mark.parametrize(
    "name",
    [None, "", "a b", "-lead", "_lead", ".lead", "a:b", "a/b", "é", "x" * 101, 5, ["a"]],
)
def test_name_charset(name: Any) -> None:
    assert fields(sms(name=name)) == ["name"]


@pytest.mark.parametrize("name", ["a", "A9", "otp.mail-v2_x", "9lives", "x" * 100])
def test_name_accepted(name: str) -> None:
    assert check(sms(name=name))[0]["name"] == name
    assert check_name(name) == name


def test_name_missing() -> None:
    assert fields(sms(name=...)) == ["name"]
    with pytest.raises(TemplateInvalid):
        check_name("a b")


@pytest.mark.parametrize("ttype", [None, "", "mail", "EMAIL", "sms", 1, ["SMS"]])
def test_type_enum(ttype: Any) -> None:
    assert fields(sms(type=ttype)) == ["type"]


def test_type_missing_and_all_types_accepted() -> None:
    assert fields(sms(type=...)) == ["type"]
    for ttype in TYPES:
        assert check(sms(type=ttype, subject="s"))[0]["type"] == ttype


@pytest.mark.parametrize("body", [..., None, "", "   \n", 5, ["OTP"], {"a": 1}])
def test_body_missing_or_not_text(body: Any) -> None:
    assert fields(sms(body=body)) == ["body"]


def test_body_too_long() -> None:
    ok = "OTP [(${otpValue})]" + "x" * 81
    assert len(ok) == 100
    assert check(sms(body=ok), max_body_chars=100)[0]["body"] == ok
    [problem] = problems(sms(body=ok + "x"), max_body_chars=100)
    assert problem["field"] == "body" and "100" in problem["message"]


def test_subject_required_for_mail() -> None:
    assert problems(mail(subject=None)) == [
        {"field": "subject", "message": "is required for MAIL templates"}
    ]
    assert fields(mail(subject=...)) == ["subject"]
    # SMS and PUSH do without one
    assert check(sms(subject=...))[0]["subject"] is None
    assert check(sms(type="PUSH"))[0]["subject"] is None


@pytest.mark.parametrize("subject", [5, ["s"], "line\nbreak", "cr\rhere", "s" * 999])
def test_subject_invalid(subject: Any) -> None:
    assert fields(mail(subject=subject, params=[])) == ["subject"]


def test_other_scalar_fields() -> None:
    assert fields(sms(active="yes")) == ["active"]
    assert fields(sms(active=1)) == ["active"]
    assert fields(sms(strategyType=5)) == ["strategyType"]
    assert fields(sms(strategyType="s" * 101)) == ["strategyType"]
    assert fields(sms(context={})) == ["context"]
    assert fields(sms(language="english!")) == ["language"]
    assert fields(sms(language=5)) == ["language"]
    assert check(sms(language=...))[0]["language"] == "en"
    assert check(sms(language="pt-BR"))[0]["language"] == "pt-BR"
    assert check_language("ro") == "ro"
    assert check_language("zh-Hant-TW") == "zh-Hant-TW"
    with pytest.raises(TemplateInvalid):
        check_language("r")
    # A language is part of the template's URL: one longer than a request line could hold was
    # stored, and never again reached by GET, PUT or DELETE.
    assert fields(sms(language="en" + "-abcdefgh" * 1000)) == ["language"]
    with pytest.raises(TemplateInvalid):
        check_language("en-aa-bb-cc-dd-ee")


def nested(depth: int) -> Any:
    """A JSON value ``depth`` levels deep: lists and objects alternating."""
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_context_free_form_but_bounded_depth() -> None:
    context = [{"a": [1, 2.5, None, True, "x"]}, "y"]
    assert check(sms(context=context))[0]["context"] == context
    assert check(sms(context=None))[0]["context"] == []
    deep_ok = [nested(31)]  # 32 levels with the outer list
    assert check(sms(context=deep_ok))[0]["context"] == deep_ok
    # Deeper values once passed validation and then failed to serialize (a 500).
    assert problems(sms(context=[nested(32)])) == [
        {"field": "context", "message": "is nested more than 32 levels deep"}
    ]
    assert fields(sms(context=[nested(300)])) == ["context"]


def test_every_problem_reported_in_one_round() -> None:
    payload = {"name": "a b", "type": "X", "active": "no", "body": "", "params": "p"}
    assert fields(payload) == ["name", "type", "active", "body", "params"]


@pytest.mark.parametrize("params", [{}, "clientId", 1, {"key": "otpValue"}])
def test_params_must_be_a_list(params: Any) -> None:
    assert problems(sms(params=params)) == [
        {"field": "params", "message": "must be a list of {key, mandatory} objects"}
    ]


def test_params_shape() -> None:
    found = problems(
        sms(
            params=[
                {"key": "otpValue", "mandatory": True},
                "otpValue",
                {"mandatory": True},
                {"key": "1abc"},
                {"key": "has space"},
                {"key": "b", "mandatory": "yes"},
                {"key": "c", "mandatory": 1},
            ]
        )
    )
    assert [p["field"] for p in found] == [
        "params[1]",
        "params[2].key",
        "params[3].key",
        "params[4].key",
        "params[5].mandatory",
        "params[6].mandatory",
    ]


def test_params_duplicates() -> None:
    found = problems(
        sms(params=[{"key": "otpValue", "mandatory": True}, {"key": "otpValue"}]),
    )
    assert found == [{"field": "params[1].key", "message": "duplicates 'otpValue'"}]


def test_params_too_many() -> None:
    params = [{"key": f"k{i}"} for i in range(101)]
    assert fields(sms(params=params)) == ["params"]
    params = [{"key": f"k{i}"} for i in range(100)]
    assert len(check(sms(params=params))[0]["params"]) == 100


def test_params_normalized() -> None:
    template, _ = check(sms(params=[{"key": "otpValue", "mandatory": True, "x": 1}, {"key": "o"}]))
    assert template["params"] == [
        {"key": "otpValue", "mandatory": True},
        {"key": "o", "mandatory": False},
    ]
    assert check(sms(params=None))[0]["params"] == []


def test_mandatory_param_unused_by_body() -> None:
    found = problems(
        sms(params=[{"key": "otpValue", "mandatory": True}, {"key": "clientId", "mandatory": True}])
    )
    assert found == [
        {
            "field": "params",
            "message": "mandatory parameter 'clientId' is not used by the subject or body",
        }
    ]
    # the subject counts as a use; an optional unused parameter is fine
    template, _ = check(mail(body="<p th:text='${otpValue}'></p>"))
    assert template["subject"] == SEED_MAIL["subject"]
    check(sms(params=[{"key": "otpValue", "mandatory": True}, {"key": "clientId"}]))
    # the seed MAIL params on the seed SMS body: clientId is unused
    found = problems(sms(params=SEED_MAIL["params"]))
    assert found == [
        {
            "field": "params",
            "message": "mandatory parameter 'clientId' is not used by the subject or body",
        }
    ]


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("OTP {{ otpValue", 1),
        ("line one\nline two\nOTP {{ otpValue }\nfour", 3),
        ("a\nb\n{% if otpValue %}x", 3),
        ("one\n[(${otpValue)]", 2),
        ("one\ntwo\n{{ otpValue | nosuchfilter }}", 3),
    ],
)
def test_body_syntax_error_names_the_line(body: str, line: int) -> None:
    [problem] = problems(sms(body=body, params=[]))
    assert problem["field"] == "body"
    assert f"line {line}" in problem["message"], problem


def test_mail_body_syntax_error_in_th_attribute() -> None:
    [problem] = problems(mail(body="<html>\n<p th:text='${otpValue'></p>\n</html>", params=[]))
    assert problem["field"] == "body" and "line 2" in problem["message"], problem


def test_subject_syntax_error() -> None:
    [problem] = problems(mail(subject="otp for [(${clientId)]", params=[]))
    assert problem["field"] == "subject" and "line 1" in problem["message"], problem


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "ok\n{{ otpValue.__class__ }}",
        "{{ otpValue['__class__'] }}",
        "{{ otpValue|attr('__class__') }}",
        "{{ __builtins__ }}",
        "{% include 'x' %}",
        "{% import 'x' as y %}",
        "{% extends 'x' %}",
    ],
)
def test_unsafe_body_refused_at_save(body: str) -> None:
    [problem] = problems(sms(body=body, params=[]))
    assert problem["field"] == "body"
    assert "line" in problem["message"]
    assert "not allowed" in problem["message"], problem


def test_unsafe_subject_refused_at_save() -> None:
    [problem] = problems(mail(subject="{{ ''.__class__ }}", params=[]))
    assert problem["field"] == "subject" and "not allowed" in problem["message"]


def test_key_format() -> None:
    assert template_key("otpMail", "en") == "otpMail:en"


# --------------------------------------------------------------------------- writer status rules

TEMPLATE = check(copy.deepcopy(SEED_SMS))[0]


def test_create_new_is_201_with_version_1() -> None:
    status, stored = apply_command(None, {"op": "create", "key": "k", "template": TEMPLATE})
    assert status == 201
    assert stored is not None
    assert {
        k: v for k, v in public(stored).items() if k not in ("version", "createdAt", "updatedAt")
    } == TEMPLATE
    assert stored["version"] == 1
    assert ISO_UTC.match(stored["createdAt"]) and stored["createdAt"] == stored["updatedAt"]


def test_create_existing_is_409_and_keeps_current() -> None:
    _, current = apply_command(None, {"op": "create", "key": "k", "template": TEMPLATE})
    changed = {**TEMPLATE, "body": "other"}
    status, stored = apply_command(current, {"op": "create", "key": "k", "template": changed})
    assert status == 409
    assert stored == current


def test_replace_existing_is_200_version_plus_one_created_kept() -> None:
    current = {**TEMPLATE, "version": 4, "createdAt": "2020-01-01T00:00:00.000Z",
               "updatedAt": "2020-01-02T00:00:00.000Z"}  # fmt: skip
    changed = {**TEMPLATE, "body": "Your code: [(${otpValue})]"}
    status, stored = apply_command(current, {"op": "replace", "key": "k", "template": changed})
    assert status == 200
    assert stored is not None
    assert stored["version"] == 5
    assert stored["createdAt"] == "2020-01-01T00:00:00.000Z"
    assert stored["updatedAt"] != current["updatedAt"] and ISO_UTC.match(stored["updatedAt"])
    assert stored["body"] == "Your code: [(${otpValue})]"


def test_replace_chain_from_create() -> None:
    _, v1 = apply_command(None, {"op": "create", "key": "k", "template": TEMPLATE})
    _, v2 = apply_command(v1, {"op": "replace", "key": "k", "template": TEMPLATE})
    _, v3 = apply_command(v2, {"op": "replace", "key": "k", "template": TEMPLATE})
    assert (v1["version"], v2["version"], v3["version"]) == (1, 2, 3)
    assert v1["createdAt"] == v2["createdAt"] == v3["createdAt"]


def test_replace_missing_is_404() -> None:
    assert apply_command(None, {"op": "replace", "key": "k", "template": TEMPLATE}) == (404, None)


def test_delete() -> None:
    _, current = apply_command(None, {"op": "create", "key": "k", "template": TEMPLATE})
    assert apply_command(current, {"op": "delete", "key": "k", "template": None}) == (204, None)
    assert apply_command(None, {"op": "delete", "key": "k", "template": None}) == (404, None)


def test_unknown_op_refused() -> None:
    with pytest.raises(ValueError):
        apply_command(None, {"op": "upsert", "key": "k", "template": TEMPLATE})
    with pytest.raises(KeyError):
        apply_command(None, {"key": "k"})


def test_a_redelivered_write_is_answered_as_the_first_time():
    from agents.templates import apply_command, public

    template = {"name": "t", "language": "en", "type": "SMS", "body": "x"}
    status, stored = apply_command(None, {"op": "create", "id": "r1", "template": template})
    assert status == 201 and stored["version"] == 1
    status, again = apply_command(stored, {"op": "create", "id": "r1", "template": template})
    assert status == 201 and again == stored
    status, replaced = apply_command(stored, {"op": "replace", "id": "r2", "template": template})
    assert status == 200 and replaced["version"] == 2
    status, replay = apply_command(replaced, {"op": "replace", "id": "r2", "template": template})
    assert status == 200 and replay["version"] == 2
    assert "_request" not in public(replay) and public(replay)["version"] == 2


# --------------------------------------------------------------------------- render budget


def test_check_fields_is_validate_without_the_compile() -> None:
    """The API runs the cheap half in the worker and sends its result to a renderer process,
    which validates it again: the normalized template must validate to itself."""
    from app.core.templates import check_fields

    for seed in (SEED_MAIL, SEED_SMS):
        payload = {**copy.deepcopy(seed), "extra": [[[["dropped"]]]]}
        stored = check_fields(payload, default_language="en", max_body_chars=1000)
        assert stored == check(copy.deepcopy(seed))[0]
        assert check(stored)[0] == stored
    deep: Any = "x"
    for _ in range(300):  # deeper than orjson encodes: must never reach a renderer process
        deep = [deep]
    with pytest.raises(TemplateInvalid) as info:
        check_fields(sms(context=[deep]), default_language="en", max_body_chars=1000)
    assert [p.field for p in info.value.problems] == ["context"]
    # a body that does not compile passes the cheap half: compiling is the renderer's job
    assert check_fields(sms(body="{{ } }}"), default_language="en", max_body_chars=1000)


def test_validate_turns_every_compile_failure_into_a_problem() -> None:
    for body, message in [
        ("{{ 1" + "0" * 5000 + " }}", "number literal is too long"),
        ("{% for i in x %}" * 25 + "{% endfor %}" * 25, "nested too deeply"),
    ]:
        found = problems(sms(body=body), max_body_chars=100_000)
        assert found[0]["field"] == "body" and message in found[0]["message"], found


def test_trial_render_refuses_a_template_over_budget() -> None:
    from app.core.templates import trial_render

    limits = render.RenderLimits()
    template, compiled = check(sms(body="OTP [(${otpValue})]{{ 'x'|center(5000000) }}"))
    with pytest.raises(TemplateInvalid) as info:
        trial_render(template, compiled, limits=limits, otp_length=6)
    assert "RENDER_MAX_OUTPUT_BYTES=1048576" in info.value.problems[0].message
    template, compiled = check(sms(body="OTP [(${otpValue})] [(${client.name})]"))
    trial_render(template, compiled, limits=limits, otp_length=6)  # undefined: the data's business
