"""User-supplied JSON Schemas (tool input schemas, INPUT node schemas), checked and
evaluated so that they can neither reach the network nor stall the process.

- Write time (`schema_problems`): the schema must be a known dialect, valid against its
  meta-schema, at most `MAX_SCHEMA_BYTES` serialised and `MAX_SCHEMA_DEPTH` deep; every
  `$ref` / `$dynamicRef` / `$recursiveRef` must point inside the document (`#...`); every
  `pattern` and `patternProperties` key must compile with RE2.
- Evaluation (`instance_errors`): references resolve through a `referencing.Registry`
  whose retrieve function refuses, so even a schema stored before these checks cannot
  make the service fetch a URL; `pattern` / `patternProperties` / `additionalProperties`
  run on RE2 (linear time, no backtracking), `uniqueItems` is linear, and each evaluation
  has a step budget (`MAX_VALIDATION_STEPS` keyword evaluations, a reference counting
  `_REF_WEIGHT`) and a wall-clock bound (`MAX_VALIDATION_SECONDS`).
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2, no stubs
from jsonschema.exceptions import SchemaError, ValidationError  # type: ignore[import-untyped]
from jsonschema.validators import (  # type: ignore[import-untyped]
    Draft202012Validator,
    extend,
    validator_for,
)
from referencing import Registry
from referencing.exceptions import Unresolvable

MAX_SCHEMA_BYTES = 100_000
MAX_SCHEMA_DEPTH = 32
MAX_PATTERN_LENGTH = 1_000
MAX_VALIDATION_STEPS = 50_000
MAX_VALIDATION_SECONDS = 1.0  # a hard wall-clock bound on top of the step budget
_REF_WEIGHT = 5  # resolving a reference costs about five plain keyword evaluations
MAX_ERRORS = 20

_PLAIN_KEY = re2.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 4 << 20


class SchemaUnusable(Exception):
    """The schema cannot be evaluated safely (invalid, or refused by the checks above)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- regular expressions -------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _compile(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 cannot run this pattern (None when it can)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"regular expression longer than {MAX_PATTERN_LENGTH} characters"
    try:
        _compile(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return (
            f"regular expression {pattern!r} is not supported ({reason}); patterns run on "
            "RE2: no backreferences or lookaround"
        )
    return None


def _search(pattern: str, text: str) -> bool:
    problem = pattern_problem(pattern)
    if problem is not None:
        raise _Refused(problem)
    return _compile(pattern).search(text) is not None


# -- safe keyword implementations ------------------------------------------------------------


class _Refused(Exception):
    """Evaluation stopped: a refused construct or the step budget."""


class _Budget:
    __slots__ = ("deadline", "left", "next_clock")

    def __init__(self, steps: int, seconds: float) -> None:
        self.left = steps
        self.next_clock = steps - 256
        self.deadline = time.monotonic() + seconds

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise _Refused(
                f"validation needs more than {MAX_VALIDATION_STEPS} steps; simplify the schema"
            )
        if self.left <= self.next_clock:
            self.next_clock = self.left - 256
            if time.monotonic() > self.deadline:
                raise _Refused(
                    f"validation took more than {MAX_VALIDATION_SECONDS} s; simplify the schema"
                )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "json_schema_budget", default=None
)


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(_search(p, key) for p in patterns)
    ]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        names = ", ".join(repr(each) for each in sorted(extras, key=str))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(patterns))
            yield ValidationError(f"{names} {verb} not match any of the regexes: {joined}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({names} {verb} unexpected)"
            )


def _canonical(value: Any) -> Any:
    """A hashable key with JSON equality: 1 == 1.0, but True != 1; key order ignored."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list | tuple):
        return ("l", tuple(_canonical(item) for item in value))
    if isinstance(value, Mapping):
        return ("d", frozenset((key, _canonical(item)) for key, item in value.items()))
    return ("o", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _unevaluated_properties_refused(
    validator: Any, value: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    raise _Refused(
        "unevaluatedProperties cannot be combined with patternProperties (patterns run on RE2)"
    )


def _counted(keyword: Callable[..., Any], weight: int) -> Callable[..., Any]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.spend(weight)
        return keyword(validator, value, instance, schema)

    return run


_SAFE: dict[Any, Any] = {}


def _safe_class(base: Any, *, pattern_properties_anywhere: bool) -> Any:
    key = (base, pattern_properties_anywhere)
    if key not in _SAFE:
        replaced: dict[str, Callable[..., Any]] = {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
            "uniqueItems": _unique_items,
        }
        if pattern_properties_anywhere:
            replaced["unevaluatedProperties"] = _unevaluated_properties_refused
        keywords = {
            name: _counted(replaced.get(name, fn), _REF_WEIGHT if name in _REF_KEYWORDS else 1)
            for name, fn in base.VALIDATORS.items()
        }
        _SAFE[key] = extend(base, keywords)
    return _SAFE[key]


def _refuse_retrieval(uri: str) -> Any:
    raise LookupError(f"remote reference {uri!r} is not fetched")


NO_RETRIEVAL: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


# -- walking the document --------------------------------------------------------------------


def _walk(schema: Any) -> Iterator[tuple[tuple[str | int, ...], Mapping[str, Any]]]:
    """Every object in the document with its path, without recursion."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Mapping):
            yield path, node
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))


def _depth(schema: Any) -> int:
    deepest = 0
    stack: list[tuple[int, Any]] = [(1, schema)]
    while stack:
        depth, node = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            return depth
        children = (
            node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ()
        )
        stack.extend((depth + 1, child) for child in children)
    return deepest


def json_path(path: Iterable[str | int]) -> str:
    """`$.properties.a['$ref']`, the notation of jsonschema's error paths."""
    parts = ["$"]
    for key in path:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif _PLAIN_KEY.match(key):
            parts.append(f".{key}")
        else:
            parts.append(f"[{key!r}]")
    return "".join(parts)


def _dialect(schema: Any) -> Any:
    if isinstance(schema, Mapping) and "$schema" in schema:
        dialect = schema["$schema"]
        cls = validator_for(schema, default=None) if isinstance(dialect, str) else None
        if cls is None:
            raise SchemaUnusable(f"has an unknown $schema {dialect!r}")
        return cls
    return Draft202012Validator


def schema_problems(schema: object) -> list[str]:
    """Why this user-supplied schema is refused (empty when it is fine). Each message reads
    after the field's name: "inputSchema has a remote reference at $.properties.a['$ref']..."."""
    if not isinstance(schema, Mapping | bool):
        return ["must be a JSON Schema (an object)"]
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return [f"is nested more than {MAX_SCHEMA_DEPTH} levels deep"]
    try:
        size = len(json.dumps(schema, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return ["must be plain JSON"]
    if size > MAX_SCHEMA_BYTES:
        return [f"is larger than {MAX_SCHEMA_BYTES} bytes"]
    try:
        cls = _dialect(schema)
    except SchemaUnusable as exc:
        return [exc.message]
    problems: list[str] = []
    has_pattern_properties = has_unevaluated = False
    for path, node in _walk(schema):
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str) and not ref.startswith("#"):
                problems.append(
                    f"has a remote reference at {json_path((*path, keyword))} ({ref!r}): "
                    "references must stay inside this schema (start with '#'); remote "
                    "schemas are never fetched"
                )
        pattern = node.get("pattern")
        if isinstance(pattern, str) and (problem := pattern_problem(pattern)):
            problems.append(
                f"has an unsupported pattern at {json_path((*path, 'pattern'))}: {problem}"
            )
        pattern_properties = node.get("patternProperties")
        if isinstance(pattern_properties, Mapping):
            has_pattern_properties = True
            for key in pattern_properties:
                if isinstance(key, str) and (problem := pattern_problem(key)):
                    where = json_path((*path, "patternProperties", key))
                    problems.append(f"has an unsupported pattern at {where}: {problem}")
        if "unevaluatedProperties" in node:
            has_unevaluated = True
    if has_pattern_properties and has_unevaluated:
        problems.append(
            "combines unevaluatedProperties with patternProperties, which is not supported "
            "(patterns run on RE2)"
        )
    if problems:
        return problems
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = f" at {exc.json_path}" if list(exc.path) else ""
        return [f"is not a valid JSON Schema{where}: {exc.message}"]
    except RecursionError:
        return ["is nested too deeply"]
    return []


# -- evaluation ------------------------------------------------------------------------------


def instance_errors(
    schema: Any, instance: Any, *, limit: int = MAX_ERRORS
) -> list[tuple[tuple[str | int, ...], str]]:
    """At most `limit` violations as (path in the instance, message), sorted by path.

    Raises SchemaUnusable when the schema fails `schema_problems`, reaches outside the
    document, or needs more than the step budget for this instance.
    """
    problems = schema_problems(schema)
    if problems:
        raise SchemaUnusable("; ".join(problems))
    has_pattern_properties = any("patternProperties" in node for _, node in _walk(schema))
    cls = _safe_class(_dialect(schema), pattern_properties_anywhere=has_pattern_properties)
    validator = cls(schema, registry=NO_RETRIEVAL)
    token = _BUDGET.set(_Budget(MAX_VALIDATION_STEPS, MAX_VALIDATION_SECONDS))
    found: list[tuple[tuple[str | int, ...], str]] = []
    try:
        for error in validator.iter_errors(instance):
            found.append((tuple(error.absolute_path), str(error.message)))
            if len(found) >= limit:
                break
    except _Refused as exc:
        raise SchemaUnusable(str(exc)) from None
    except Unresolvable as exc:
        raise SchemaUnusable(
            f"unresolvable reference ({exc}); remote schemas are never fetched"
        ) from None
    except RecursionError:
        raise SchemaUnusable("the schema or the input is nested too deeply") from None
    finally:
        _BUDGET.reset(token)
    return sorted(found, key=lambda item: [str(p) for p in item[0]])
