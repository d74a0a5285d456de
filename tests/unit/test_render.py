"""Unit tests for app.core.render (Thymeleaf subset -> sandboxed Jinja2)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.render import (
    CompiledTemplate,
    Rendered,
    RenderError,
    TemplateError,
    compile_cached,
    compile_template,
    html_to_text,
    missing_mandatory,
    render,
    unused_mandatory,
)

SEED_MAIL_SUBJECT = "otp for [(${clientId})]"
SEED_MAIL_BODY = (
    "<!DOCTYPE html><html xmlns:th='<http://www.thymeleaf.org>'><head>"
    "<meta http-equiv='Content-Type' content='text/html; charset=UTF-8' /></head>"
    "<body><p>Yay, an otp was generated for you:</p><p th:text='${otpValue}'></p>"
    "</body></html>"
)
SEED_SMS_BODY = "OTP [(${otpValue})]"
SEED_DATA = {"clientId": "1234567890", "otpValue": "123456"}
SEED_PARAMS = [
    {"key": "clientId", "mandatory": True},
    {"key": "otpValue", "mandatory": True},
]


def body(source: str, data: dict | None = None, *, html: bool = True) -> str:
    return render(compile_template(None, source, html=html), data or {}).body


# --------------------------------------------------------------------------- seeds


def test_seed_mail_template() -> None:
    compiled = compile_template(SEED_MAIL_SUBJECT, SEED_MAIL_BODY, html=True)
    out = render(compiled, SEED_DATA)
    assert isinstance(out, Rendered)
    assert out.subject == "otp for 1234567890"
    assert "<p>123456</p>" in out.body
    assert out.body.startswith("<!DOCTYPE html><html")
    assert "th:" not in out.body
    assert "<meta http-equiv='Content-Type' content='text/html; charset=UTF-8' />" in out.body
    assert out.text is not None
    assert "123456" in out.text
    assert "Yay, an otp was generated for you:" in out.text
    assert "<" not in out.text
    assert compiled.variables == frozenset({"clientId", "otpValue"})
    assert compiled.html is True


def test_seed_sms_template() -> None:
    compiled = compile_template(None, SEED_SMS_BODY, html=False)
    out = render(compiled, SEED_DATA)
    assert out == Rendered(subject=None, body="OTP 123456", text=None)
    assert compiled.subject is None
    assert compiled.variables == frozenset({"otpValue"})


def test_seed_params() -> None:
    compiled = compile_template(SEED_MAIL_SUBJECT, SEED_MAIL_BODY, html=True)
    assert missing_mandatory(SEED_PARAMS, SEED_DATA) == []
    assert missing_mandatory(SEED_PARAMS, {}) == ["clientId", "otpValue"]
    assert missing_mandatory(SEED_PARAMS, {"clientId": None, "otpValue": ""}) == [
        "clientId",
        "otpValue",
    ]
    assert missing_mandatory(SEED_PARAMS, {"clientId": 0, "otpValue": False}) == []
    assert unused_mandatory(SEED_PARAMS, compiled) == []
    sms = compile_template(None, SEED_SMS_BODY, html=False)
    assert unused_mandatory(SEED_PARAMS, sms) == ["clientId"]


def test_mandatory_helpers_edge_cases() -> None:
    params = [
        {"key": "b", "mandatory": True},
        {"key": "a", "mandatory": "true"},
        {"key": "c", "mandatory": "false"},
        {"key": "d"},
        {"key": "b", "mandatory": True},  # duplicate reported once
        {"mandatory": True},  # malformed: no key
        {"key": "", "mandatory": True},
    ]
    assert missing_mandatory(params, {}) == ["a", "b"]
    compiled = compile_template(None, "[[${b}]]", html=False)
    assert unused_mandatory(params, compiled) == ["a"]
    assert missing_mandatory([], {}) == []


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("<p th:text='${name}'></p>", "<p>&lt;script&gt;</p>"),
        ('<p th:text="${name}">placeholder</p>', "<p>&lt;script&gt;</p>"),
        ("<p>[[${name}]]</p>", "<p>&lt;script&gt;</p>"),
        ("<p>{{ name }}</p>", "<p>&lt;script&gt;</p>"),
        ("<p>[(${name})]</p>", "<p><script></p>"),
        ("<p th:utext='${name}'></p>", "<p><script></p>"),
        ("<p data-th-text='${name}'></p>", "<p>&lt;script&gt;</p>"),
    ],
)
def test_html_escaping(source: str, expected: str) -> None:
    assert body(source, {"name": "<script>"}) == expected


def test_text_templates_are_never_html_escaped() -> None:
    data = {"name": "<b>&"}
    assert body("[[${name}]] [(${name})] {{ name }}", data, html=False) == "<b>& <b>& <b>&"


def test_subject_is_text_even_for_html_templates() -> None:
    compiled = compile_template("Hi [[${name}]]", "<p>x</p>", html=True)
    assert render(compiled, {"name": "Tom & Jerry"}).subject == "Hi Tom & Jerry"


def test_subject_line_breaks_are_folded() -> None:
    compiled = compile_template("Hi [(${name})]", "x", html=False)
    out = render(compiled, {"name": "a\r\nBcc: evil@example.com\n"})
    assert out.subject == "Hi a Bcc: evil@example.com"


def test_a_subject_a_parameter_makes_long_is_cut_to_one_header_line() -> None:
    """Encoding a 60 KB subject took 80 ms of the event loop per receiver; a mail header line
    holds 998 characters anyway."""
    compiled = compile_template("Hi [(${name})] {{ name }}", "x", html=False)
    out = render(compiled, {"name": "a" * 60_000})
    assert out.subject is not None and len(out.subject) == 998
    assert out.subject.startswith("Hi aaa") and out.subject.endswith("a\u2026")
    assert render(compiled, {"name": "Ann"}).subject == "Hi Ann Ann"


def test_json_values_render_like_thymeleaf() -> None:
    data = {"n": None, "t": True, "f": False, "i": 3, "x": 1.5}
    assert body("[[${n}]]|[(${n})]|[[${t}]]|[(${f})]|[[${i}]]|[[${x}]]", data) == (
        "|" + "|true|false|3|1.5"
    )


# --------------------------------------------------------------------------- expressions


def test_dotted_path() -> None:
    data = {"client": {"firstName": "Ana", "address": {"city": "Cluj"}}}
    assert body("[[${client.firstName}]]", data) == "Ana"
    assert body("<b th:text='${client.address.city}'>x</b>", data) == "<b>Cluj</b>"
    assert body("[[${ client.firstName }]]", data) == "Ana"


def test_dotted_path_prefers_keys_over_dict_methods() -> None:
    assert body("[[${order.items}]]", {"order": {"items": "3 books"}}) == "3 books"


@pytest.mark.parametrize(
    "source",
    [
        "[[${a + b}]]",
        "[(${T(java.lang.Runtime).getRuntime()})]",
        "[[${a[0]}]]",
        "[[${}]]",
        "[[${#dates.format(now)}]]",
        "[[${a.}]]",
        "[[${1a}]]",
        "<p th:text='${a or b}'></p>",
        "<p th:if='${a == 1}'>x</p>",
        "<p th:text='hello'></p>",
        "<p th:text=''></p>",
        "<p th:text></p>",
        '<p th:unless="#{msg}">x</p>',
        '<p th:text="|Hi ${a}|"></p>',
    ],
)
def test_only_dotted_paths_are_allowed(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(None, source, html=True)
    assert info.value.field == "body"
    assert info.value.line == 1


def test_expression_error_message_is_clear() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(None, "ok\n[[${a + b}]]", html=False)
    assert str(info.value).startswith("body line 2: unsupported expression '${a + b}'")


def test_reserved_word_as_variable() -> None:
    with pytest.raises(TemplateError, match="reserved word"):
        compile_template(None, "[[${none}]]", html=False)


def test_unterminated_inline_expression() -> None:
    with pytest.raises(TemplateError, match="unterminated inline") as info:
        compile_template(None, "a\n\n[[${x}", html=False)
    assert info.value.line == 3


def test_plain_brackets_are_left_alone() -> None:
    assert body("see [[wiki]] and [(note)] and [1]", html=False) == (
        "see [[wiki]] and [(note)] and [1]"
    )


def test_plain_jinja_still_works() -> None:
    source = "{% if vip %}Dear {{ name|upper }}{% else %}Hello{% endif %}"
    assert body(source, {"vip": True, "name": "ana"}, html=False) == "Dear ANA"
    assert body(source, {"vip": False}, html=False) == "Hello"


# --------------------------------------------------------------------------- undefined


def test_missing_top_level_renders_empty() -> None:
    assert body("Hi [[${name}]]!", {}, html=False) == "Hi !"
    assert body("<p th:text='${name}'>x</p>", {}) == "<p></p>"


def test_missing_nested_key_renders_empty() -> None:
    assert body("[[${client.firstName}]]", {"client": {}}, html=False) == ""


def test_nested_lookup_on_missing_parent_is_render_error() -> None:
    compiled = compile_template(None, "line1\n[[${client.firstName}]]", html=False)
    with pytest.raises(RenderError) as info:
        render(compiled, {})
    assert info.value.field == "body"
    assert info.value.line == 2
    assert "'client' is undefined" in str(info.value)


# --------------------------------------------------------------------------- th:if / th:unless


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (1, True),
        (0.0, False),
        ("yes", True),
        ("false", False),
        ("OFF", False),
        ("no", False),
        ("", True),  # Thymeleaf: any non-"false/off/no" string is true
        ([], True),
        ({"a": 1}, True),
    ],
)
def test_th_if_uses_thymeleaf_truthiness(value: object, kept: bool) -> None:
    out_if = body("<p th:if='${flag}'>shown</p>", {"flag": value})
    out_unless = body("<p th:unless='${flag}'>shown</p>", {"flag": value})
    assert out_if == ("<p>shown</p>" if kept else "")
    assert out_unless == ("" if kept else "<p>shown</p>")


def test_th_if_missing_variable_is_false() -> None:
    assert body("a<p th:if='${flag}'>x</p>b", {}) == "ab"
    assert body("a<p th:unless='${flag}'>x</p>b", {}) == "a<p>x</p>b"


def test_th_if_with_nested_same_name_tags() -> None:
    source = (
        "<div class='outer' th:if=\"${show}\"><div>inner<div>deep</div></div>"
        "<div th:unless='${hide}'>maybe</div></div><div>after</div>"
    )
    assert body(source, {"show": True, "hide": False}) == (
        "<div class='outer'><div>inner<div>deep</div></div><div>maybe</div></div><div>after</div>"
    )
    assert body(source, {"show": True, "hide": True}) == (
        "<div class='outer'><div>inner<div>deep</div></div></div><div>after</div>"
    )
    assert body(source, {"show": False}) == "<div>after</div>"


def test_th_if_on_void_and_self_closing_elements() -> None:
    source = "a<br th:if='${x}' />b<img src='i.png' th:if='${x}'>c<span th:if='${x}'/>d"
    assert body(source, {"x": True}) == "a<br />b<img src='i.png'>c<span/>d"
    assert body(source, {"x": False}) == "abcd"


def test_th_if_and_th_text_on_same_element() -> None:
    source = "<p th:if='${show}' th:text='${msg}'>old</p>"
    assert body(source, {"show": True, "msg": "new"}) == "<p>new</p>"
    assert body(source, {"show": False, "msg": "new"}) == ""


def test_th_if_and_th_unless_combined() -> None:
    source = "<p th:if='${a}' th:unless='${b}'>x</p>"
    assert body(source, {"a": True, "b": False}) == "<p>x</p>"
    assert body(source, {"a": True, "b": True}) == ""
    assert body(source, {"a": False, "b": False}) == ""


def test_th_text_replaces_nested_markup() -> None:
    source = "<td th:text='${v}'><b>old</b><td>x</td></td><td>keep</td>"
    assert body(source, {"v": "new"}) == "<td>new</td><td>keep</td>"


def test_th_attributes_case_insensitive_and_other_attributes_kept() -> None:
    source = '<P Class="c" TH:TEXT="${v}" id=x data-a=\'1\'>old</p>'
    assert body(source, {"v": "new"}) == "<P Class=\"c\" id=x data-a='1'>new</p>"


def test_th_on_unclosed_element_is_template_error() -> None:
    with pytest.raises(TemplateError, match="never closed") as info:
        compile_template(None, "ok\n<div th:if='${a}'><div></div>", html=True)
    assert info.value.line == 2


def test_misnested_elements_are_template_error() -> None:
    with pytest.raises(TemplateError):
        compile_template(None, "<div th:if='${a}'><p th:text='${b}'></div></p>", html=True)


@pytest.mark.parametrize(
    "source",
    [
        "<p th:each='x : ${xs}'>x</p>",
        "<a th:href='${url}'>x</a>",
        "<p th:text='${a}' th:utext='${b}'></p>",
        "<p th:if='${a}' th:if='${b}'></p>",
        "<br th:text='${a}'>",
    ],
)
def test_unsupported_th_usages_are_refused(source: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(None, source, html=True)


def test_th_in_raw_text_and_comments_is_ignored() -> None:
    source = "<script>if (a<b) { x = '<p th:text=\"${v}\">'; }</script><!-- <p th:if='${v}'> -->"
    assert body(source, {"v": "1"}) == source


def test_translation_preserves_line_numbers() -> None:
    source = (
        "<p\n   th:text='${a}'\n   class='c'>\nold\ncontent\n</p>\n"
        "<div th:if='${b}'>\n</div>\n{{ oops( }}\n"
    )
    with pytest.raises(TemplateError) as info:
        compile_template(None, source, html=True)
    assert info.value.line == 9
    ok = source.replace("{{ oops( }}", "end")
    assert body(ok, {"a": "A", "b": True}) == "<p\n   class='c'>A</p>\n<div>\n</div>\nend\n"


# --------------------------------------------------------------------------- errors & sandbox


def test_syntax_error_reports_field_and_line() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(None, "line one\nline two\n{{ } }}\nline four", html=True)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.field, err.line) == ("body", 3)
    assert str(err) == "body line 3: unexpected '}'"
    assert err.message == "unexpected '}'"


def test_subject_errors_name_the_subject() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template("{% if %}", "ok", html=True)
    assert info.value.field == "subject"
    assert info.value.line == 1


def test_unknown_filter_is_template_error() -> None:
    with pytest.raises(TemplateError, match="nope") as info:
        compile_template(None, "\n{{ x|nope }}", html=False)
    assert info.value.line == 2


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ x.__class__.__mro__ }}",
        "{{ x['__globals__'] }}",
        "{{ x|attr('__class__') }}",
        "{{ xs|map(attribute='__class__')|list }}",
        "{{ _private }}",
        "[[${_private}]]",
        "[[${client._secret}]]",
        "{% set _x = 1 %}",
        "{% include 'other.html' %}",
        "{% import 'macros.html' as m %}",
        "{% from 'macros.html' import m %}",
        "{% extends 'base.html' %}",
    ],
)
def test_sandbox_refuses_at_compile_time(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(None, source, html=True)
    assert info.value.field == "body"
    assert info.value.line == 1


def test_sandbox_blocks_dynamic_private_attribute_at_render_time() -> None:
    data = {"x": "s", "n": "__class__"}
    # the sandbox turns the unsafe attribute into an undefined value ...
    assert body("{{ x|attr(n) }}", data) == ""
    # ... and using it any further is a security error
    compiled = compile_template(None, "{{ (x|attr(n)).mro() }}", html=True)
    with pytest.raises(RenderError, match="forbidden or unsafe"):
        render(compiled, data)


def test_sandbox_blocks_internal_attributes_at_render_time() -> None:
    compiled = compile_template(None, "{{ f.gi_frame }}{{ t.mro() }}", html=False)
    with pytest.raises(RenderError):
        render(compiled, {"f": (i for i in ()), "t": int})


def test_templates_cannot_mutate_data() -> None:
    data = {"d": {"a": 1}, "l": [1]}
    for source in ("{{ d.update({'a': 2}) }}", "{{ l.append(2) }}", "{{ d.clear() }}"):
        with pytest.raises(RenderError):
            render(compile_template(None, source, html=False), data)
    assert data == {"d": {"a": 1}, "l": [1]}


@pytest.mark.parametrize(
    "source", ["{{ 'x' * 100000000 }}", "{{ 10 ** 100000 }}", "{{ range(10**9)|list }}"]
)
def test_resource_bombs_are_render_errors(source: str) -> None:
    with pytest.raises(RenderError):
        render(compile_template(None, source, html=False), {})


def test_render_error_does_not_leak_data_or_internals() -> None:
    secret = "S3CR3T-424242"
    compiled = compile_template(None, "{{ otp + 1 }}", html=False)
    with pytest.raises(RenderError) as info:
        render(compiled, {"otp": secret})
    text = str(info.value)
    assert secret not in text
    assert "str" not in text and "int" not in text and "Traceback" not in text
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_render_rejects_non_mapping_data() -> None:
    compiled = compile_template(None, "x", html=False)
    with pytest.raises(RenderError):
        render(compiled, ["not", "a", "mapping"])  # type: ignore[arg-type]


def test_non_string_template_is_template_error() -> None:
    with pytest.raises(TemplateError):
        compile_template(None, None, html=False)  # type: ignore[arg-type]


def test_pathological_markup_is_fast() -> None:
    start = time.perf_counter()
    unclosed = "<a" + " b" * 20000 + " th:if='${x}'>" + "<" * 20000
    with pytest.raises(TemplateError, match="never closed"):
        compile_template(None, unclosed, html=True)
    compile_template(None, "<a" + " b" * 20000 + " th:if='${x}'" + " " * 20000, html=True)
    compile_template(None, "<p th " + "x=1 " * 20000, html=True)
    nested = "<p th:if='${x}'>" * 50 + "y" + "</p>" * 50
    assert body(nested, {"x": 1}) == "<p>" * 50 + "y" + "</p>" * 50
    with pytest.raises(TemplateError, match="nested too deeply"):
        compile_template(None, "<p th:if='${x}'>" * 2000 + "</p>" * 2000, html=True)
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------------- cache


def test_compile_cached_reuses_per_version() -> None:
    a = compile_cached(("otp", "en", 1), SEED_MAIL_SUBJECT, SEED_MAIL_BODY, html=True)
    b = compile_cached(("otp", "en", 1), SEED_MAIL_SUBJECT, SEED_MAIL_BODY, html=True)
    c = compile_cached(("otp", "en", 2), SEED_MAIL_SUBJECT, SEED_MAIL_BODY, html=True)
    d = compile_cached(("otp", "en", 1), SEED_MAIL_SUBJECT, SEED_MAIL_BODY + " ", html=True)
    assert isinstance(a, CompiledTemplate)
    assert a is b
    assert c is not a
    assert d is not a
    assert render(c, SEED_DATA).subject == "otp for 1234567890"


def test_compile_cached_propagates_template_errors() -> None:
    for _ in range(2):
        with pytest.raises(TemplateError):
            compile_cached(("bad", "en", 1), None, "{{ }", html=False)


# --------------------------------------------------------------------------- html_to_text


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p { color: red }</style></head><body>"
        "<h1>Hi&nbsp;there &amp; you</h1><p>line1<br>line2<br/><br>line4</p>"
        "<ul><li>a</li><li>b <b>bold</b></li></ul>"
        "<div><div>x</div><div>y</div></div>"
        "<p>Go <a href='https://example.com/z'>here</a> now</p>"
        "<script>var a = 1 < 2;</script>end</body></html>"
    )
    assert html_to_text(html) == (
        "Hi there & you\n\nline1\nline2\n\nline4\n\n- a\n- b bold\n\nx\ny\n\n"
        "Go here (https://example.com/z) now\n\nend"
    )


def test_html_to_text_plain_input() -> None:
    assert html_to_text("  just   text\n\n\n\nmore  ") == "just text more"
    assert html_to_text("") == ""


# --------------------------------------------------------------------------- properties

_PLAIN_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="{}[\r"),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(text=_PLAIN_TEXT, html=st.booleans())
def test_text_without_template_syntax_round_trips(text: str, html: bool) -> None:
    assert body(text, {}, html=html) == text


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=100))
def test_escaped_values_never_produce_markup(value: str) -> None:
    for source in ("<p>[[${x}]]</p>", "<p th:text='${x}'></p>", "<p>{{ x }}</p>"):
        out = body(source, {"x": value})
        inner = out.removeprefix("<p>").removesuffix("</p>")
        assert "<" not in inner and ">" not in inner


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(source=st.text(max_size=200), html=st.booleans())
def test_compile_only_raises_template_error(source: str, html: bool) -> None:
    try:
        compile_template(source, source, html=html)
    except TemplateError as exc:
        assert exc.field in ("subject", "body")


_FUZZ_TEMPLATE = compile_template(
    "[[${a}]] [(${b.c})]",
    "<p th:if='${a}' th:text='${b.c}'></p>[[${a.b.c}]]{{ a ~ b }}{{ a + 1 }}"
    "{% for x in a %}{{ x }}{% endfor %}{{ a|length }}",
    html=True,
)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["a", "b", "c"]), _JSON, max_size=3))
def test_render_only_raises_render_error(data: dict) -> None:
    try:
        render(_FUZZ_TEMPLATE, data)
    except RenderError as exc:
        assert exc.field in ("subject", "body")


@settings(max_examples=200, deadline=None)
@given(markup=st.text(alphabet=st.sampled_from(list("<>/ab =\"'&;!-p\n")), max_size=200))
def test_html_to_text_never_fails(markup: str) -> None:
    assert isinstance(html_to_text(markup), str)
