"""Sandboxed templates, safe expressions and the names they reference."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from domain.errors import BadUserInput
from domain.flows import expressions
from domain.flows.expressions import (
    ExpressionError,
    TemplateError,
    build_scope,
    evaluate,
    referenced_names,
    references,
    render,
    templates,
)

SCOPE = build_scope(
    {"score": 7, "items": [1, 2, 3], "name": "bob", "keys": "not the method"},
    {"research": "the findings", "a-b": {"x": 1}},
)


# ------------------------------------------------------------------------------- scope


def test_build_scope_shape() -> None:
    assert build_scope({"a": 1}, {"n": "out"}) == {
        "inputs": {"a": 1},
        "nodes": {"n": {"output": "out"}},
    }


def test_errors_are_bad_user_input() -> None:
    assert issubclass(TemplateError, BadUserInput)
    assert issubclass(ExpressionError, BadUserInput)
    assert TemplateError("x").code == "BAD_USER_INPUT"


# ------------------------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Summarise {{ nodes.research.output }}", "Summarise the findings"),
        ("{{ inputs.name | upper }} has {{ inputs.score }}", "BOB has 7"),
        ("{{ nodes['a-b'].output.x + 1 }}", "2"),
        ("{% for i in inputs['items'] %}{{ loop.index }}:{{ i }} {% endfor %}", "1:1 2:2 3:3 "),
        ("{% if inputs.score > 5 %}high{% else %}low{% endif %}", "high"),
        ("{{ inputs.keys }}", "not the method"),  # mapping keys win over dict methods
        ("{{ inputs['items'] | join(', ') }}", "1, 2, 3"),
        ("{{ range(3) | sum }}", "3"),
        ("{{ '%05.1f' % 3.14159 }}", "003.1"),
        ("{{ 'ab' ~ 'cd' }}", "abcd"),
        ("{{ [inputs.name] * 2 }}", "['bob', 'bob']"),
        ("{{ 2 ** 10 }}", "1024"),
        ("no placeholders\n", "no placeholders\n"),
    ],
)
def test_render(template: str, expected: str) -> None:
    assert render(template, SCOPE) == expected


def test_render_caches_compiled_templates() -> None:
    expressions.clear_caches()
    render("{{ inputs.name }} cached", SCOPE)
    render("{{ inputs.name }} cached", {"inputs": {"name": "eve"}})
    info = templates.compile_template.cache_info()
    assert info.hits == 1
    assert info.misses == 1


def test_render_does_not_mutate_scope() -> None:
    scope = build_scope({"items": [1]}, {})
    with pytest.raises(TemplateError, match="unsafe"):
        render("{{ inputs['items'].append(2) }}", scope)
    assert scope["inputs"]["items"] == [1]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ oops", "syntax error on line 1"),
        ("{% for x in y %}", "syntax error"),
        ("{{ x | no_such_filter }}", "No filter named"),
        ("{{ inputs.missing }}", "undefined"),
        ("{{ missing_name }}", "undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% include 'other' %}", "cannot extend, include or import"),
        ("{% extends 'base' %}", "cannot extend, include or import"),
        ("{% import 'm' as m %}", "cannot extend, include or import"),
    ],
)
def test_render_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(template, SCOPE)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ().__class__.__bases__[0].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ self.__init__.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ inputs.__class__ }}",
        "{{ inputs['__class__'] }}",
        "{{ (inputs|attr('__class__')) }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ 'x'.format_map({}) }}",
        "{{ inputs.update({'a': 1}) }}",
    ],
)
def test_sandbox_escapes_raise_template_error(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, SCOPE)


def test_unsafe_globals_are_removed() -> None:
    for template in ("{{ lipsum() }}", "{{ namespace(a=1) }}"):
        with pytest.raises(TemplateError, match="undefined"):
            render(template, SCOPE)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'a' * 100000000 }}", "limit"),
        ("{{ ['a'] * 100000000 }}", "limit"),
        ("{{ 2 ** 100000 }}", "too large"),
        ("{{ 'x' | center(1000000000) }}", "width"),
        ("{{ 'x'.ljust(1000000000) }}", "width"),
        ("{{ 'x'.zfill(1000000000) }}", "width"),
        ("{{ '%1000000000s' % 'x' }}", "width"),
        ("{{ '%*d' % (1000000000, 1) }}", "'\\*' widths"),
        ("{{ 'x' | indent(1000000000) }}", "width"),
        ("{{ 'x' | format() if false else '%900000000d' | format(1) }}", "width"),
        ("{{ [1, 2] | batch(1000000000) | list }}", "batch"),
        ("{{ [[1], [2]] | sum(start=[]) }}", "numbers"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loop",
        ),
        (
            "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 40 + "{{ a | length }}",
            "limit",
        ),
        (
            "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a + a %}" * 40 + "{{ a | length }}",
            "limit",
        ),
        ("{% set l = ['x' * 1000] * 1000 %}{{ [l, l, l, l, l, l, l, l, l, l, l] }}", "limit"),
        ("{% set l = ['x' * 1000] * 1000 %}{{ [l] * 11 }}", "limit"),
        (
            "{% set l = ['x' * 5000] * 1000 %}{{ l | join('-') ~ l | join('-') ~ l | join }}",
            "limit",
        ),
        (
            "{{ ('x' * 100000).replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy' * 10) }}",
            "replace",
        ),
        ("{{ ('x' * 100000) | replace('x', 'y' * 200) }}", "replace"),
        ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "recursed"),
        (
            "{% set a = ['x' * 5000] * 1000 %}{% set l = [a, a, a] %}{{ l | upper | length }}",
            "text of a value",
        ),
        (
            "{% set a = ['x' * 5000] * 1000 %}{% set l = [a, a, a] %}{{ l | indent }}",
            "text of a value",
        ),
        (
            "{% set a = ['x' * 5000] * 1000 %}{% set l = [a, a, a] %}{{ l | safe }}",
            "text of a value",
        ),
    ],
)
def test_render_resource_limits(template: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=message):
        render(template, SCOPE)
    assert time.monotonic() - started < 5


def test_render_timeout() -> None:
    template = "{% for i in range(100000) %}{% for j in range(9) %}{{ '' }}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="longer than"):
        render(template, SCOPE, timeout=0.01)


def test_render_output_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates, "MAX_OUTPUT_LENGTH", 1000)
    with pytest.raises(TemplateError, match="rendered text exceeds"):
        render("{% for i in range(1000) %}xx{% endfor %}", SCOPE)


def test_template_too_long() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        render("x" * (expressions.MAX_TEMPLATE_LENGTH + 1), SCOPE)


def test_render_rejects_non_strings() -> None:
    with pytest.raises(TemplateError, match="must be a string"):
        render(123, SCOPE)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("inputs.score > 5", True),
        ("inputs.score > 50", False),
        ("nodes.research.output == 'the findings'", True),
        ("nodes['a-b'].output.x + 1", 2),
        ("inputs['items'][0]", 1),
        ("len(inputs['items']) == 3 and inputs.name.startswith('b')", True),
        ("[x * 2 for x in inputs['items'] if x > 1]", [4, 6]),
        ("{k: v for k, v in [('a', 1)]}", {"a": 1}),
        ("inputs.keys", "not the method"),
        ("inputs.get('score')", 7),
        ("'high' if inputs.score > 5 else 'low'", "high"),
        ("inputs.score in [1, 7]", True),
        ("not inputs.score", False),
        ("f'{inputs.score:>3}'", "  7"),
        ("max(inputs['items']) + min(inputs['items']) + sum(inputs['items'])", 10),
        ("sorted([3, 1, 2])", [1, 2, 3]),
        ("2 ** 100 > 0", True),
        ("str(inputs.score) + '!'", "7!"),
    ],
)
def test_evaluate(expression: str, expected: Any) -> None:
    assert evaluate(expression, SCOPE) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "not allowed"),
        ("__builtins__", "not allowed"),
        ("inputs.__class__", "not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
        ("inputs.name.__class__.__mro__", "not allowed"),
        ("inputs['name'].format(1)", "not allowed"),
        ("'{0.__class__}'.format_map({})", "not allowed"),
        ("open('/etc/passwd')", "unknown function"),
        ("eval('1')", "unknown function"),
        ("getattr(inputs, 'x')", "unknown function"),
        ("lambda: 1", "Lambda"),
        ("(x := 1)", "NamedExpr"),
        ("[*inputs['items']]", "Starred"),
        ("inputs['items'].append(4)", "not available"),
        ("inputs.pop('score')", "no attribute or key"),
        ("inputs.score.__add__(1)", "not allowed"),
        ("f'{inputs.__class__}'", "not allowed"),
    ],
)
def test_evaluate_rejects_unsafe(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, SCOPE)


@pytest.mark.parametrize(
    "expression",
    [
        "9 ** 9 ** 9",
        "10 ** 100000",
        "2 ** 4000000",
        "(10 ** 1000) ** 1000",
        "1 << 100000",
        "'a' * 10 ** 9",
        "[0] * 10 ** 9",
        "[x for x in [1] * 10000 for y in [1] * 10000]",
        "str([['x' * 1000] * 1000] * 1000)",
        "[[inputs.name * 1000] * 1000 for i in [1] * 10000]",
        "f'{inputs.score:>1000000000}'",
        "inputs.name.center(1000000000)",
        "('x' * 100000).replace('x', 'y' * 200)",
        "'-'.join(['x' * 10000] * 10000)",
        "sum([[1], [2]], [])",
    ],
)
def test_evaluate_bounded(expression: str) -> None:
    started = time.monotonic()
    with pytest.raises(ExpressionError, match=r"limit|too"):
        evaluate(expression, SCOPE)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("inputs.score >", "syntax error"),
        ("x = 1", "syntax error"),
        ("1; 2", "syntax error"),
        ("import os", "syntax error"),
        ("unknown_name > 1", "unknown name 'unknown_name'"),
        ("inputs.nope", "no attribute or key 'nope'"),
        ("min([])", "ValueError"),
        ("inputs.score @ 2", "MatMult"),
        ("(1 + " * 100 + "1" + ")" * 100, "nest"),
        ("-" * 200 + "1", "nest"),
        ("+".join(["1"] * 3000), "longer than"),
    ],
)
def test_evaluate_errors(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, SCOPE)


def test_evaluate_timeout() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate("[x for x in [1] * 9999 for y in [1]]", SCOPE, timeout=0)


def test_evaluate_rejects_non_strings() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        evaluate(None, SCOPE)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain text", set()),
        ("{{ inputs }}", {("inputs",)}),
        ("Summarise {{ nodes.research.output }}", {("nodes", "research", "output")}),
        ("{{ nodes['a-b'].output.deeper }}", {("nodes", "a-b", "output")}),
        (
            '{{- nodes["q"].output -}}{{inputs.topic}}',
            {("nodes", "q", "output"), ("inputs", "topic")},
        ),
        ("{{ nodes.x.output | upper }} {{ foo }}", {("nodes", "x", "output"), ("foo",)}),
        ("{{ nodes[inputs.k].output }}", {("nodes",), ("inputs", "k")}),
        ("{% for n in nodes %}{{ n }}{% endfor %}", {("nodes",)}),
        ("{% for x in inputs.list %}{{ x }}{{ loop.index }}{% endfor %}", {("inputs", "list")}),
        ("{% set y = 1 %}{{ y }}{{ range(2) }}{{ dict(a=1) }}", set()),
        ("{% set nodes = 1 %}{{ nodes }}", set()),
        ("{{ nodes.a.foo.bar }}", {("nodes", "a", "foo")}),
        ("{{ loop }}", {("loop",)}),
        ("{{{ nodes.x.output }}", None),  # not valid Jinja: must not take the fast path
    ],
)
def test_referenced_names_in_templates(source: str, expected: set[tuple[str, ...]] | None) -> None:
    if expected is None:
        with pytest.raises(TemplateError):
            referenced_names(source, "template")
    else:
        assert referenced_names(source, "template") == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("inputs.score > 5", {("inputs", "score")}),
        (
            "nodes.a.output and nodes['b-c'].output[0]",
            {("nodes", "a", "output"), ("nodes", "b-c", "output")},
        ),
        ("nodes[inputs.k].output", {("nodes",), ("inputs", "k")}),
        ("[x for x in inputs.l if x > y]", {("inputs", "l"), ("y",)}),
        ("{k: nodes.q.output for k in inputs.l}", {("inputs", "l"), ("nodes", "q", "output")}),
        ("len(foo) + max(inputs.l, key=len)", {("foo",), ("inputs", "l")}),
        ("bar(1)", {("bar",)}),
        ("True and None is None", set()),
    ],
)
def test_referenced_names_in_expressions(source: str, expected: set[tuple[str, ...]]) -> None:
    assert referenced_names(source, "expression") == expected


def test_referenced_names_parse_errors() -> None:
    with pytest.raises(TemplateError, match="syntax"):
        referenced_names("{{ nodes.a.output", "template")
    with pytest.raises(TemplateError, match="No filter"):
        referenced_names("{{ nodes.a.output | nope }}", "template")
    with pytest.raises(ExpressionError, match="syntax"):
        referenced_names("nodes.a.output ==", "expression")
    with pytest.raises(ExpressionError, match="not allowed"):
        referenced_names("inputs.__class__", "expression")


def test_template_fast_path_matches_full_parse() -> None:
    """The regex fast path must agree with the Jinja parse on every template it accepts."""
    rng = random.Random(1234)
    pieces = [
        "text ",
        "{",
        "}",
        "}}",
        "{{ inputs.a }}",
        "{{inputs.b.c}}",
        "{{- nodes.x.output -}}",
        "{{ nodes['a-b'].output }}",
        '{{ nodes["q"].output.z }}',
        "{{ nodes . x }}",
        "{{ nodes.x|upper }}",
        "{{ foo }}",
        "{% if inputs.a %}",
        "{% endif %}",
        "{# c #}",
        "{{ nodes[0] }}",
        "{{ inputs }}",
        "\n",
        "{{",
        "'",
    ]
    accepted = 0
    for _ in range(3000):
        source = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        fast = references.simple_template_refs(source)
        if fast is None:
            continue
        accepted += 1
        assert fast == references.parsed_template_refs(source), source
    assert accepted > 100
