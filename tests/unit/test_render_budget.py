"""The render budget: every template bomb is refused quickly, naming its limit; legit templates
render exactly as before. Also the render pool (child processes under a hard time limit)."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.core import render
from app.core import templates as model
from app.core.render import (
    RenderBudgetError,
    RenderError,
    RenderLimits,
    TemplateError,
    compile_template,
)
from app.render_pool import (
    RenderCrashed,
    RenderPool,
    RenderPoolBusy,
    RenderPoolUnavailable,
    RenderTimeout,
)
from devtools.support import SEED_MAIL, SEED_SMS

LIMITS = RenderLimits()
CAP = LIMITS.max_output
DATA: dict[str, Any] = {
    "body": "line\n" * 10_000,
    "name": "Ana",
    "n": 7,
    "xs": [3, 1, 2],
    "d": {"a": 1, "b": [1, 2]},
    "big": {f"k{i}": "v" for i in range(20_000)},
}
#: Wall-clock bound of one refused bomb: the budget is 200 ms; the rest is slack for a busy CI.
QUICK = 2.0


def refused(source: str, *, html: bool = False, data: dict[str, Any] | None = None) -> str:
    """Render ``source``; it must be refused quickly by the budget. Returns the message."""
    started = time.monotonic()
    with pytest.raises(RenderBudgetError) as info:
        render.render(compile_template(None, source, html=html), DATA if data is None else data)
    assert time.monotonic() - started < QUICK, source
    assert info.value.__cause__ is None
    return info.value.message


def body(source: str, data: dict[str, Any] | None = None, *, html: bool = False) -> str:
    return render.render(compile_template(None, source, html=html), data or {}).body


# --------------------------------------------------------------------------- the abuse run


TIME = "RENDER_TIMEOUT_MS=200"
SIZE = f"RENDER_MAX_OUTPUT_BYTES={CAP}"
LOOPS = "more than 100000 loop iterations"


@pytest.mark.parametrize(
    ("source", "names"),
    [
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            LOOPS,
        ),
        ("{{ 'x'|center(5000000) }}", SIZE),
        ("{{ 'x'|center(1000000000) }}", SIZE),
        ("{{ '%05000000d' % 1 }}", SIZE),
        ("{{ '%.5000000f' % 1.0 }}", SIZE),
        ("{{ '%*d' % (10000000, 1) }}", "'%*'"),
        ("{{ '{:>5000000}'.format(1) }}", SIZE),
        ("{{ '{:{w}}'.format(1, w=5000000) }}", SIZE),
        ("{{ '{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}'.format('x' * 100000) }}", SIZE),
        ("{{ '{a}{a}{a}{a}{a}{a}{a}{a}{a}{a}{a}'.format_map({'a': 'x' * 100000}) }}", SIZE),
        ("{{ body|indent(500) }}", SIZE),
        ("{{ 'x'|indent('y' * 2000000) }}", SIZE),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            SIZE,
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            SIZE,
        ),
        (
            "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "more than 100000 items",
        ),
        ("{{ ((9**1024)**1024)**1024 }}", "65536 bits"),
        ("{{ 10 ** 100000 }}", "65536 bits"),
        (
            "{% set ns = namespace(x=3) %}{% for i in range(100) %}"
            "{% set ns.x = ns.x * ns.x %}{% endfor %}",
            "65536 bits",
        ),
        ("{{ 'x' * 100000000 }}", SIZE),
        ("{{ [1] * 100000000 }}", "more than 100000 items"),
        ("{{ ('a' * 1000).replace('a', 'x' * 10000) }}", SIZE),
        ("{{ 'abc'|replace('b', 'x' * 2000000) }}", SIZE),
        ("{{ 'x'.ljust(10000000) }}", SIZE),
        ("{{ 'x'.rjust(10000000) }}", SIZE),
        ("{{ 'x'.center(10000000) }}", SIZE),
        ("{{ 'x'.zfill(10000000) }}", SIZE),
        ("{{ 'x'.join(['y' * 1000] * 2000) }}", SIZE),
        ("{{ (['y' * 1000] * 2000)|join }}", SIZE),
        ("{{ range(10)|join('x' * 200000) }}", SIZE),
        ("{{ range(1)|slice(1000000000)|list }}", "more than 100000 items"),
        ("{{ [1]|batch(1000000000, 'x')|list }}", "more than 100000 items"),
        ("{{ [1]|tojson(indent=1000000000) }}", SIZE),
        # json builds the indent (a gigabyte of spaces) before it writes even a number
        ("{{ 7|tojson(indent=1000000000) }}", SIZE),
        ("{{ none|tojson(indent=1000000000) }}", SIZE),
        ("{{ [1, 2]|indent(1000000000) }}", SIZE),  # so does indent, for a list too
        ("{{ range(1000)|list|tojson(indent=10000) }}", SIZE),
        ("{{ ('word ' * 200000)|wordwrap(1) }}", "at most 65536 characters"),
        ("{{ ('x' * 60000)|wordwrap(1) }}", "too slow"),
        ("{{ 'x'|wordwrap(5, wrapstring='y' * 5000000) }}", SIZE),
        ("{{ ('x' * 100)|truncate(1000000000, end='y' * 2000000) }}", SIZE),
        ("{{ '%s'|format('x' * 2000000) }}", SIZE),
        ("{{ [[1]] * 1000|sum(start=[]) }}", "only adds numbers"),
        ("{{ ([[1]] * 1000)|sum(start=[]) }}", "only adds numbers"),
        ("{{ 1.5|round(1000000000, 'ceil') }}", "1000 digits"),
        ("{{ ('x' * 60000)|sort }}", "at most 10000 items"),
        ("{{ ('a ' * 100000)|title }}", "at most 65536 characters"),
        ("{{ ('x' * 999999)|urlize }}", "at most 65536 characters"),
        ("{{ big|xmlattr }}", "at most 10000 items"),
        ("{{ ('<' * 900000)|e }}", SIZE),
        ("{{ range(100000)|map('center', 1000000)|join }}", "16 x " + SIZE),
        ("{{ ('x,' * 200000).split(',') }}", "more than 100000 items"),
        (
            "{% macro m() %}{% for i in range(100000) %}" + "x" * 1000 + "{% endfor %}"
            "{% endmacro %}{{ m()|length }}",
            SIZE,
        ),
        (
            "{% set x %}{% for i in range(100000) %}" + "y" * 100 + "{% endfor %}{% endset %}"
            "{{ x|length }}",
            SIZE,
        ),
        ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", SIZE),
        (
            "{% macro m(n) %}{% if n > 0 %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
            "{{ m(40) }}",
            "RENDER_TIMEOUT_MS",
        ),
    ],
)
def test_bombs_are_refused_quickly_naming_the_limit(source: str, names: str) -> None:
    assert names in refused(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ '\\t'.expandtabs(10000000) }}",
        "{{ 'a'.translate({97: 'x' * 1000000}) }}",
        "{{ 'a'.encode('utf-32') }}",
        "{{ (1).to_bytes(1000000000, 'big') }}",
        "{{ dict.fromkeys(range(10)) }}",
        "{{ ''.maketrans('a', 'b') }}",
        "{{ dict.update(d, {'a': 2}) }}",
        "{{ dict.get(d, 'a') }}",
    ],
)
def test_methods_outside_the_allowlist_are_refused(source: str) -> None:
    message = refused(source)
    assert "is not allowed in templates (method allowlist)" in message


def test_dict_update_through_the_dict_global_cannot_mutate_data() -> None:
    """``dict.update(d, ...)`` slipped past the immutable sandbox (``dict`` the type is not a
    mutable mapping): data shared by several renders must stay as it was."""
    data = {"d": {"a": 1}}
    with pytest.raises(RenderBudgetError):
        render.render(compile_template(None, "{{ dict.update(d, {'a': 2}) }}", html=False), data)
    assert data == {"d": {"a": 1}}


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'Ana'.upper() }}{{ 'a,b'.split(',')|join('+') }}{{ ' x '.strip() }}",
        "{{ 'x'.center(5) }}|{{ 'x'.ljust(3) }}|{{ '7'.zfill(3) }}|{{ 'aXa'.replace('a', 'b') }}",
        "{{ ', '.join(['a', 'b']) }} {{ '{} {x}'.format(1, x=2) }} {{ '%s-%d' % ('a', 3) }}",
        "{{ d.get('a') }} {{ d.keys()|list }} {{ xs.index(1) }} {{ (5).bit_length() }}",
        "{% for k, v in d.items() %}{{ k }}{% endfor %}{{ 'abc'.startswith('a') }}",
    ],
)
def test_allowed_methods_still_work(source: str) -> None:
    out = body(source, DATA)
    assert out == reference(source, DATA)


def test_exponentially_shared_values_are_refused_when_built() -> None:
    """``[a, a]`` nested 40 deep is 40 lists in memory and 2**40 copies of ``a`` when printed,
    compared or hashed: refused when built, before anything walks it."""
    for build in ("[ns.a, ns.a]", "(ns.a, ns.a)", "{'k': ns.a, 'j': ns.a}", "[ns.a] * 2"):
        source = (
            "{% set ns = namespace(a='x' * 10, b='x' * 10) %}{% for i in range(60) %}"
            f"{{% set ns.a = {build} %}}{{% endfor %}}{{{{ ns.a == ns.b }}}}"
        )
        assert SIZE in refused(source)
    chain = "".join(
        f"{{% set n{i} = namespace() %}}{{% set n{i}.a = n{i - 1} %}}{{% set n{i}.b = n{i - 1} %}}"
        for i in range(1, 40)
    )
    for use in (
        "{{ n39 }}",
        "{{ [n39] }}",
        "{{ '%s' % n39 }}",
        "{{ n39 ~ '' }}",
        "{{ n39|string }}",
    ):
        source = "{% set n0 = namespace(v='x' * 100) %}" + chain + use
        assert SIZE in refused(source), use
    assert SIZE in refused("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}")


def test_recursive_loops_are_counted() -> None:
    source = "{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}"
    with pytest.raises(RenderError):  # Python's recursion limit comes first: still a RenderError
        body(source)
    wide = (
        "{% for x in range(20) recursive %}{% if loop.depth < 3 %}{{ loop(range(20)) }}"
        "{% endif %}{% endfor %}"
    )
    assert len(body(wide)) == 0  # 20 + 20**2 + 20**3 iterations: within the default budget
    limits = RenderLimits(max_iterations=1000, timeout_ms=10_000)
    with pytest.raises(RenderBudgetError, match="more than 1000 loop iterations"):
        render.render(compile_template(None, wide, html=False), {}, limits)


def test_output_limit_is_exact_and_in_utf8_bytes() -> None:
    limits = RenderLimits(max_output=1000)
    assert len(render.render(compile_template(None, "x" * 1000, html=False), {}, limits).body)
    with pytest.raises(RenderBudgetError, match="RENDER_MAX_OUTPUT_BYTES=1000 characters"):
        render.render(compile_template(None, "{{ 'x' * 1001 }}", html=False), {}, limits)
    with pytest.raises(RenderBudgetError, match="RENDER_MAX_OUTPUT_BYTES=1000 bytes of UTF-8"):
        render.render(compile_template(None, "{{ 'é' * 600 }}", html=False), {}, limits)
    subject_and_body = compile_template("{{ 'x' * 600 }}", "{{ 'y' * 600 }}", html=False)
    with pytest.raises(RenderBudgetError, match="RENDER_MAX_OUTPUT_BYTES"):
        render.render(subject_and_body, {}, limits)


def test_time_budget_names_the_setting() -> None:
    limits = RenderLimits(timeout_ms=50)
    started = time.monotonic()
    with pytest.raises(RenderBudgetError) as info:
        source = "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
        render.render(compile_template(None, source + "{{ m(30) }}", html=False), {}, limits)
    assert info.value.rule == "RENDER_TIMEOUT_MS"
    assert str(info.value) == (
        "body line 1: the template ran over its time budget (RENDER_TIMEOUT_MS=50)"
    )
    assert time.monotonic() - started < QUICK


def test_loop_limit_is_configurable() -> None:
    limits = RenderLimits(max_iterations=10)
    compiled = compile_template(None, "{% for i in range(10) %}{{ i }}{% endfor %}", html=False)
    assert render.render(compiled, {}, limits).body == "0123456789"
    compiled = compile_template(None, "{% for i in range(11) %}{{ i }}{% endfor %}", html=False)
    with pytest.raises(RenderBudgetError, match="more than 10 loop iterations"):
        render.render(compiled, {}, limits)


def test_budgets_are_per_render_even_across_threads() -> None:
    """The budget lives in a context variable: renders in other threads (or tasks) never share
    it, so a hostile render cannot use up a legit one's budget."""
    hostile = compile_template(None, "{% for i in range(99999) %}{% endfor %}", html=False)
    legit = compile_template(None, "{% for i in range(99999) %}{% endfor %}ok", html=False)
    errors: list[BaseException] = []
    # The iteration budget is what is shared or not; three threads taking turns on the GIL of a
    # loaded machine must not turn it into a test of the (per-render) time budget.
    limits = RenderLimits(timeout_ms=60_000)

    def work(compiled: render.CompiledTemplate) -> None:
        try:
            for _ in range(3):
                render.render(compiled, {}, limits)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in (hostile, legit, hostile)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --------------------------------------------------------------------------- compile


def test_a_5000_digit_literal_is_a_template_error_with_its_line() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(None, "ok\n{{ 1" + "0" * 5000 + " }}", html=False)
    assert (info.value.field, info.value.line) == ("body", 2)
    assert "number literal is too long" in info.value.message


def test_too_many_nested_loops_is_a_template_error() -> None:
    """Python refuses more than 20 nested blocks in the generated code (a SyntaxError)."""
    source = "{% for i in x %}" * 25 + "{% endfor %}" * 25
    with pytest.raises(TemplateError, match="nested too deeply"):
        compile_template(None, source, html=False)


def test_filters_are_not_run_at_compile_time() -> None:
    """Jinja folds filters of constants at compile time; ours take the context, so
    ``'x'|center(10**9)`` costs nothing at save and is refused at render."""
    tracemalloc.start()
    try:
        compiled = compile_template(None, "{{ 'x'|center(1000000000) }}" * 20, html=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Folded, one filter alone would have built a 1 GB string; measured by memory, not time,
    # so a loaded machine cannot fail it.
    assert peak < 64 * 1024 * 1024, peak
    with pytest.raises(RenderBudgetError):
        render.render(compiled, {})


def test_lone_surrogate_is_a_render_error() -> None:
    for source in ("{{ '\\ud800' }}", "{{ 'a\\udfffb'|upper }}"):
        message = refused(source)
        assert "not valid Unicode" in message
    compiled = compile_template("{{ '\\ud800' }}", "ok", html=True)
    with pytest.raises(RenderBudgetError) as info:
        render.render(compiled, {})
    assert info.value.field == "subject"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\x00b", "Hi ab"),
        ("a\x1b[31mred", "Hi a[31mred"),
        ("a\r\nBcc: x@example.com", "Hi a Bcc: x@example.com"),
        ("a\u2028b\u2029c", "Hi a b c"),
        ("a\tb\x0bc\x0cd\x85e\x7f\x9ff", "Hi a b c d ef"),
        ("a    b", "Hi a b"),
        ("  padded  ", "Hi padded"),
    ],
)
def test_subject_drops_control_characters(value: str, expected: str) -> None:
    compiled = compile_template("Hi [(${v})]", "x", html=False)
    assert render.render(compiled, {"v": value}).subject == expected


# --------------------------------------------------------------------------- legit templates


def reference(source: str, data: dict[str, Any]) -> str:
    """The same template in Jinja's stock sandbox (same finalize and undefined policy)."""
    env = ImmutableSandboxedEnvironment(
        finalize=lambda v: (
            ""
            if v is None
            else {True: "true", False: "false"}.get(v, v)
            if isinstance(v, bool)
            else v
        ),
        keep_trailing_newline=True,
        undefined=render._LenientTopLevelUndefined,
    )
    return env.from_string(source).render(data)


LEGIT = [
    "{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for x in xs|sort %}{{ x }}{% else %}none{% endfor %}|{% for y in [] %}{% else %}e{% endfor %}",
    "{% for k, v in d|dictsort %}{{ k }}={{ v }};{% endfor %}",
    "{% for x in xs if x > 1 %}{{ x }}{% endfor %}",
    "{% for row in range(10)|batch(3, 0) %}{{ row|sum }} {% endfor %}",
    "{% for col in range(10)|slice(3) %}{{ col|join(',') }}/{% endfor %}",
    "{% for x in range(5) %}{{ loop.cycle('odd', 'even') }}{{ loop.revindex }}{% endfor %}",
    "{% macro b(t) %}<b>{{ t }}</b>{% endmacro %}{{ b(name) }}{{ b('x' ~ n) }}",
    "{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}inner {{ n }}{% endcall %}",
    "{% set s %}block {{ name }}{% endset %}{{ s|upper }}{% filter lower %}ABC{% endfilter %}",
    "{{ name|center(9) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'long text here'|wordwrap(5) }}",
    "{{ 'Hello World'|replace('World', name) }} {{ xs|join('-') }} {{ '%05.1f'|format(3.14159) }}",
    "{{ d|tojson }} {{ d|tojson(indent=2) }} {{ xs|pprint }} {{ 'a b'|urlencode }}",
    "{{ n * 3 }} {{ n ** 3 }} {{ 2 ** 64 }} {{ n % 4 }} {{ name * 2 }} {{ xs + [4] }} {{ n + 1 }}",
    "{{ '%s is %d' % (name, n) }} {{ '%(a)s' % {'a': 1} }} {{ name ~ n ~ xs }}",
    "{{ xs|max }} {{ xs|min }} {{ xs|unique|list }} {{ xs|reverse|list }} {{ name|list }}",
    "{{ 'x'|truncate(10) }} {{ ('word ' * 20)|truncate(20) }} {{ 1234567|filesizeformat }}",
    "{{ 'ab cd'|title }} {{ 'ab cd'|capitalize }} {{ ' x '|trim }} {{ 'a b c'|wordcount }}",
    "{{ 3.14159|round(2) }} {{ 2.5|round(0, 'ceil') }} {{ '42'|int + 1 }} {{ xs|length }}",
    "{% set ns = namespace(total=0) %}{% for x in xs %}{% set ns.total = ns.total + x %}"
    "{% endfor %}{{ ns.total }}",
    "{{ dict(a=1, b=2)|dictsort }} {{ [1, [2, (3, 4)]] }} {{ {'k': [1, 2]} }} {{ (1, 2) }}",
    "{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}"
    "{% set j = joiner('|') %}{% for x in xs %}{{ j() }}{{ x }}{% endfor %}",
    "{{ xs|map('string')|join }} {{ xs|select('odd')|list }} {{ d.b|map('abs')|list }}",
    "{{ [{'a': 2}, {'a': 1}]|sort(attribute='a')|map(attribute='a')|join }}",
    "{{ [{'a': 2}, {'a': 1}]|groupby('a')|map(attribute='grouper')|list }}",
    "{{ 'x' if n > 3 else 'y' }} {{ n is divisibleby 7 }} {{ name is lower }} {{ 'a' in name }}",
    "{{ undefined_name }}|{{ d.missing }}|{{ none }}|{{ true }}|{{ false }}",
]


@pytest.mark.parametrize("source", LEGIT)
def test_legit_templates_render_exactly_as_in_the_stock_sandbox(source: str) -> None:
    assert body(source, DATA) == reference(source, DATA)


def test_html_escaping_is_unchanged() -> None:
    data = {"name": "<b>&'\""}
    source = "{{ name }}|{{ name ~ '!' }}|{{ [name]|join }}|{{ '%s' % name }}|{{ name|safe }}"
    escaped = "&lt;b&gt;&amp;&#39;&#34;"
    assert body(source, data, html=True) == f"{escaped}|{escaped}!|{escaped}|{escaped}|<b>&'\""


def test_seed_templates_render_as_before() -> None:
    mail = compile_template(SEED_MAIL["subject"], SEED_MAIL["body"], html=True)
    out = render.render(mail, {"clientId": "1234567890", "otpValue": "123456"})
    assert out.subject == "otp for 1234567890" and "<p>123456</p>" in out.body
    sms = compile_template(None, SEED_SMS["body"], html=False)
    assert render.render(sms, {"otpValue": "123456"}).body == "OTP 123456"


# --------------------------------------------------------------------------- properties

_INTS = st.sampled_from([0, 1, 2, 3, 10, 64, 1000, 100_000, 1_000_000, 10**9]) | st.integers(-3, 9)
_ATOMS = st.sampled_from(["'x'", "'ab'", "name", "n", "xs", "[1, 2]", "(1,)", "d", "none", "2.5"])


def _expression(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 2 or draw(st.booleans()):
        return draw(_ATOMS)
    left = _expression(draw, depth + 1)
    kind = draw(st.sampled_from(["op", "filter", "method"]))
    if kind == "op":
        op = draw(st.sampled_from(["*", "+", "~", "**", "%", "-", "//"]))
        right = draw(_INTS.map(str)) if draw(st.booleans()) else _expression(draw, depth + 1)
        return f"({left} {op} {right})"
    if kind == "filter":
        name = draw(
            st.sampled_from(
                ["center", "indent", "truncate", "wordwrap", "batch", "slice", "round"]
                + ["format", "join", "list", "string", "tojson", "sum", "replace", "e"]
            )
        )
        args = {
            "replace": f"('x', {left})",
            "join": f"({left})",
            "format": f"({left}, {left})",
            "tojson": f"(indent={draw(_INTS)})",
            "sum": "",
        }.get(name, f"({draw(_INTS)})")
        return f"({left}|{name}{args})"
    method = draw(st.sampled_from(["center", "ljust", "zfill", "replace", "join", "format"]))
    args = {"replace": f"'x', {left}", "join": f"[{left}, {left}]", "format": left}.get(
        method, str(draw(_INTS))
    )
    return f"('{{}}x'.{method}({args}))"


@st.composite
def _templates(draw: st.DrawFn) -> str:
    expression = _expression(draw)
    shape = draw(st.sampled_from(["plain", "loop", "nested", "double"]))
    if shape == "plain":
        return "{{ " + expression + " }}"
    if shape == "loop":
        return f"{{% for i in range({draw(_INTS)}) %}}{{{{ {expression} }}}}{{% endfor %}}"
    if shape == "nested":
        a, b = draw(_INTS), draw(_INTS)
        return (
            f"{{% for i in range({a}) %}}{{% for j in range({b}) %}}{{{{ {expression} }}}}"
            "{% endfor %}{% endfor %}"
        )
    return (
        f"{{% set ns = namespace(v={expression}) %}}{{% for i in range({draw(_INTS)}) %}}"
        "{% set ns.v = ns.v ~ ns.v %}{% endfor %}{{ ns.v|length }}"
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=_templates(), html=st.booleans())
def test_random_bombs_end_quickly_within_the_limits(source: str, html: bool) -> None:
    limits = RenderLimits(timeout_ms=200, max_output=65_536)
    started = time.monotonic()
    try:
        compiled = compile_template(None, source, html=html, limits=limits)
        out = render.render(compiled, DATA, limits)
    except (TemplateError, RenderError):
        pass
    else:
        assert len(out.body.encode()) <= limits.max_output
    assert time.monotonic() - started < QUICK, source


# --------------------------------------------------------------------------- trial render


def sms(body_text: str, **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SEED_SMS), "body": body_text, "params": [], **changes}


def test_trial_render_refuses_budget_errors_only() -> None:
    for source in ("{% for i in range(100000) %}{% for j in range(9) %}{% endfor %}{% endfor %}",):
        template, compiled = model.validate(sms(source), default_language="en", max_body_chars=1000)
        with pytest.raises(model.TemplateInvalid) as info:
            model.trial_render(template, compiled, limits=LIMITS, otp_length=6)
        # The iteration limit, or on a loaded machine the clock, whichever comes first.
        message = info.value.problems[0].message
        assert "loop iterations" in message or "time budget" in message, message
    template, compiled = model.validate(
        sms("{{ client.name }}"), default_language="en", max_body_chars=1000
    )
    model.trial_render(template, compiled, limits=LIMITS, otp_length=6)  # data's business


def test_trial_render_uses_sample_values_for_mandatory_params() -> None:
    params = [{"key": "code", "mandatory": True}, {"key": "opt", "mandatory": False}]
    source = "{{ code * 1000000 }}{{ opt * 1000000 }}"
    template, compiled = model.validate(
        sms(source, params=params), default_language="en", max_body_chars=1000
    )
    assert model.sample_data(template["params"], 6) == {"code": "sample", "otpValue": "123456"}
    with pytest.raises(model.TemplateInvalid, match="RENDER_MAX_OUTPUT_BYTES"):
        model.trial_render(template, compiled, limits=LIMITS, otp_length=6)


# --------------------------------------------------------------------------- render pool

VALIDATE = {"default_language": "en", "max_body_chars": 100_000, "otp_length": 6}


async def test_pool_validates_and_previews() -> None:
    pool = RenderPool(LIMITS, size=1)
    try:
        stored = await pool.validate(copy.deepcopy(SEED_MAIL), **VALIDATE)
        assert stored["name"] == SEED_MAIL["name"] and stored["strategyType"] is None
        with pytest.raises(model.TemplateInvalid) as info:
            await pool.validate(sms("{{ 'x'|center(5000000) }}"), **VALIDATE)
        assert "RENDER_MAX_OUTPUT_BYTES" in info.value.problems[0].message
        with pytest.raises(model.TemplateInvalid, match="number literal is too long"):
            await pool.validate(sms("{{ 1" + "0" * 5000 + " }}"), **VALIDATE)
        out = await pool.preview(
            {**SEED_MAIL, "version": 1}, {"clientId": "a\x00\x1bb", "otpValue": "42"}
        )
        assert out.subject == "otp for ab" and "<p>42</p>" in out.body and out.text
        with pytest.raises(RenderError, match="not valid Unicode"):
            await pool.preview(sms("{{ '\\ud800' }}", version=1), {})
        with pytest.raises(TemplateError):
            await pool.preview(sms("{{ } }}", version=1), {})
    finally:
        await pool.close()


async def test_pool_kills_a_child_over_its_hard_limit_and_replaces_it() -> None:
    """A 10 ms budget and no allowance: compiling a large body cannot finish in time, and
    Python cannot interrupt the compile; the child is killed and the next job gets a new one."""
    pool = RenderPool(RenderLimits(timeout_ms=10), size=1, ipc_allowance=0.0)
    try:
        await pool.validate(sms("warm up"), **VALIDATE)
        first = pool._idle[0].proc
        big = "{% if a %}{{ b|upper }}{% else %}{{ c ~ d }}{% endif %}\n" * 1500
        started = time.monotonic()
        with pytest.raises(RenderTimeout, match=r"RENDER_TIMEOUT_MS=10\)"):
            await pool.validate(sms(big), **VALIDATE)
        assert time.monotonic() - started < QUICK
        assert await asyncio.wait_for(first.wait(), 5) == -signal.SIGKILL
        stored = await pool.validate(sms("OTP [(${otpValue})]"), **VALIDATE)
        assert stored["body"] == "OTP [(${otpValue})]"
        assert pool._idle[0].proc.pid != first.pid
    finally:
        await pool.close()


async def test_pool_survives_a_crashed_child() -> None:
    slow = sms(
        "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(40) }}"
    )
    pool = RenderPool(RenderLimits(timeout_ms=5000), size=1)
    try:
        await pool.validate(sms("x"), **VALIDATE)
        idle = pool._idle[0].proc
        os.kill(idle.pid, signal.SIGKILL)  # dies between jobs: the next job gets a new child
        await idle.wait()
        assert (await pool.validate(sms("y"), **VALIDATE))["body"] == "y"
        job = asyncio.ensure_future(pool.validate(slow, **VALIDATE))
        for _ in range(5000):  # the job's child, as soon as it has it (a fixed sleep raced it)
            if pool._busy:
                break
            await asyncio.sleep(0.001)
        (busy,) = pool._busy
        os.kill(busy.proc.pid, signal.SIGKILL)  # dies during a job: that job fails, cleanly
        with pytest.raises(RenderCrashed, match="failed on this template"):
            await job
        assert (await pool.validate(sms("z"), **VALIDATE))["body"] == "z"
    finally:
        await pool.close()


async def test_pool_queue_is_bounded() -> None:
    pool = RenderPool(RenderLimits(timeout_ms=300), size=1, max_waiting=1)
    slow = sms(
        "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(40) }}"
    )
    try:
        await pool.validate(sms("warm up"), **VALIDATE)
        jobs = [
            asyncio.ensure_future(pool.validate(copy.deepcopy(slow), **VALIDATE)) for _ in range(3)
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds == ["RenderPoolBusy", "TemplateInvalid", "TemplateInvalid"], results
        assert isinstance(results[2], RenderPoolBusy)
    finally:
        await pool.close()


async def test_pool_close_stops_children_and_refuses_new_jobs() -> None:
    pool = RenderPool(LIMITS, size=2)
    await asyncio.gather(*(pool.validate(sms(str(i)), **VALIDATE) for i in range(2)))
    procs = [child.proc for child in pool._idle]
    assert len(procs) == 2
    await pool.close()
    assert all(proc.returncode == 0 for proc in procs)
    with pytest.raises(RenderPoolUnavailable):
        await pool.validate(sms("x"), **VALIDATE)


async def test_pool_start_has_every_child_ready_for_the_first_job() -> None:
    pool = RenderPool(LIMITS, size=2)
    try:
        await pool.start()
        procs = {child.proc.pid for child in pool._idle}
        assert len(procs) == 2
        await pool.start()  # started already: nothing more
        compiled = await pool.compile(sms("OTP [(${otpValue})]"))
        assert compiled.variables == {"otpValue"}
        assert {child.proc.pid for child in pool._idle} == procs
    finally:
        await pool.close()


async def test_the_read_models_compiles_go_before_the_apis_jobs() -> None:
    from app.render_pool import _Slots

    slots = _Slots(1)
    await slots.acquire()
    order: list[str] = []

    async def job(name: str, urgent: bool) -> None:
        await slots.acquire(urgent=urgent)
        order.append(name)
        slots.release()

    waiting = [asyncio.create_task(job(f"api-{n}", False)) for n in range(3)]
    await asyncio.sleep(0)
    waiting.append(asyncio.create_task(job("compile", True)))
    cancelled = asyncio.create_task(job("gone", True))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*waiting)
    assert order == ["compile", "api-0", "api-1", "api-2"]
    assert slots.free == 1


async def test_a_renderer_holds_none_of_the_workers_secrets(monkeypatch: pytest.MonkeyPatch):
    """Renderers run templates from API clients: a way out of the sandbox there must find no
    secret in the environment (read here from the child's own /proc entry)."""
    monkeypatch.setenv("OTP_HMAC_SECRET", "secret-in-the-worker-0123456789")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token-in-the-worker")
    pool = RenderPool(LIMITS, size=1)
    try:
        await pool.start()
        [child] = pool._idle
        environ = Path(f"/proc/{child.proc.pid}/environ").read_bytes()
        assert b"secret-in-the-worker" not in environ and b"token-in-the-worker" not in environ
        assert b"PATH=" in environ
        compiled = await pool.compile(sms("OTP [(${otpValue})]"))  # and it works
        assert compiled.variables == {"otpValue"}
    finally:
        await pool.close()
