"""A request's URL before any view reads it: listed query parameters only, each once, UTF-8."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from app.settings import Settings
from tests.unit.test_openapi_document import BASE_ENV
from web.errors import ApiError
from web.openapi import limits_of, operations
from web.query import check_url, query_names, shape

NAMES = frozenset({"language", "draft"})


def check(url: str, names: frozenset[str] | None = NAMES) -> None:
    parsed = URL(url, encoded=True)
    check_url(parsed.raw_path, parsed.raw_query_string, parsed.query, names)


def refusal(url: str, names: frozenset[str] | None = NAMES) -> tuple[str, str]:
    with pytest.raises(ApiError) as caught:
        check(url, names)
    assert caught.value.status == 400
    [detail] = caught.value.details
    return detail["field"], detail["message"]


def test_listed_parameters_pass() -> None:
    check("/api/template/otp?language=en&draft=true")
    check("/api/template/otp")
    check("/api/template/otp?")
    check("/api/template/%C3%A9t%C3%A9?language=pt-BR")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/template/otp?Draft=true", "Draft"),  # published, once
        ("/api/template/otp?lang=fr", "lang"),  # deleted the default language's, once
        ("/api/template/otp?language=en&x", "x"),
    ],
)
def test_an_unlisted_parameter_is_refused_naming_it(url: str, field: str) -> None:
    name, message = refusal(url)
    assert name == field and "draft, language" in message


def test_a_repeated_parameter_is_refused() -> None:
    assert refusal("/api/template/otp?draft=false&draft=true") == (
        "draft",
        "must be given at most once",
    )


def test_a_route_without_parameters_refuses_any() -> None:
    assert "listed: none" in refusal("/health?verbose=1", frozenset())[1]


@pytest.mark.parametrize(
    ("url", "field"),
    [("/api/otp/a%FFb", "path"), ("/api/otp/a?language=%FF", "query"), ("/x?%C3=1", "query")],
)
def test_bytes_that_are_not_utf8_are_refused(url: str, field: str) -> None:
    assert refusal(url, None) == (field, "is not UTF-8 once percent-decoded")


def test_an_undescribed_route_checks_only_the_encoding() -> None:
    check("/somewhere?anything=1&anything=2", None)


@given(st.text(max_size=60), st.binary(max_size=30))
def test_any_url_passes_or_is_a_400(text: str, raw: bytes) -> None:
    query = "".join(f"%{b:02X}" for b in raw)
    for url in (f"/api/template/x?{text}", f"/api/template/x?{query}={text}", f"/{query}"):
        try:
            parsed = URL(url)
        except ValueError:
            continue
        try:
            check_url(parsed.raw_path, parsed.raw_query_string, parsed.query, NAMES)
        except ApiError as exc:
            assert exc.status == 400 and exc.details


def test_every_documented_operation_is_known_by_its_route_and_method() -> None:
    names = query_names(operations(limits_of(Settings.from_env(BASE_ENV))))
    assert names[(shape("/api/template/{name}"), "PUT")] == {"language", "draft"}
    assert names[(shape("/api/template"), "POST")] == frozenset()
