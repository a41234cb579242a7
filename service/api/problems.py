"""Validation problems in words a client can act on: the field's path, what was given, what
is allowed; never pydantic's internals.

pydantic names the branches of a union in its error locations (`function-after[...]`,
`list[str]`, with the reprs of validator functions in them) and reports one error per
branch. Here the branch names leave the path, and the errors of one union become one line:
the errors of the branch the value matched by type (a negative token id, an empty text), or,
when no branch matched, the types that are allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

MAX_PROBLEMS = 10
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
    "literal_error": "one of the listed values",
}
_INTERNAL = ("<function", "functools", " at 0x", "pydantic", "<class")


def _is_branch(part: Any) -> bool:
    """A union branch's name in a location, not a field name or an index."""
    return isinstance(part, str) and ("[" in part or "(" in part or part in _BRANCH_WORDS)


_BRANCH_WORDS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after"}


def _split(loc: Sequence[Any]) -> tuple[str, str | None, str]:
    """(the path before the first union branch, that branch's name, the whole path)."""
    parts = [p for p in loc if p != "body"]
    head: list[str] = []
    branch: str | None = None
    full: list[str] = []
    for part in parts:
        if _is_branch(part):
            branch = branch or str(part)
            continue
        full.append(str(part))
        if branch is None:
            head.append(str(part))
    return ".".join(head), branch, ".".join(full)


def _tree(tag: str) -> tuple[str, list[str]]:
    """`name[arg, arg]` split at its top-level commas (reprs inside may nest anything)."""
    if not tag.endswith("]") or "[" not in tag:
        return tag, []
    name, inner = tag[: tag.index("[")], tag[tag.index("[") + 1 : -1]
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return name, args


_NOUNS = {
    "str": ("a string", "strings"),
    "int": ("an integer", "integers"),
    "float": ("a number", "numbers"),
    "bool": ("a boolean", "booleans"),
    "none": ("null", "nulls"),
}


def type_words(tag: str, plural: bool = False) -> str:
    """A union branch's name in words: `list[function-after[f(), str]]` -> a list of strings."""
    name, args = _tree(tag)
    if name.startswith("function-") and args:
        return type_words(args[-1], plural)
    if name == "list" and args:
        inner = type_words(args[0], plural=True)
        return f"lists of {inner}" if plural else f"a list of {inner}"
    if name in _NOUNS:
        return _NOUNS[name][1 if plural else 0]
    return "objects" if plural else "an object"


def given(value: Any) -> str:
    """A short JSON rendering of what the client sent."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _is_type_error(err: dict[str, Any]) -> bool:
    kind = str(err.get("type", ""))
    return kind.endswith("_type") or kind in {"int_parsing", "literal_error", "none_required"}


def _words(err: dict[str, Any]) -> str:
    """What is allowed, in words."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    bounds = {
        "greater_than_equal": ("must be >= {}", "ge"),
        "greater_than": ("must be > {}", "gt"),
        "less_than_equal": ("must be <= {}", "le"),
        "less_than": ("must be < {}", "lt"),
        "too_short": ("must have at least {} items", "min_length"),
        "too_long": ("must have at most {} items", "max_length"),
        "string_too_short": ("must have at least {} characters", "min_length"),
        "string_too_long": ("must have at most {} characters", "max_length"),
    }
    if kind in bounds and bounds[kind][1] in ctx:
        template, key = bounds[kind]
        return template.format(ctx[key])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']}"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}"
    msg = str(err.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _line(path: str, err: dict[str, Any]) -> str:
    words = _words(err)
    shown = (
        ""
        if err.get("type") in {"missing", "json_invalid"}
        else f" (got {given(err.get('input'))})"
    )
    line = f"{path}: {words}{shown}" if path else f"{words}{shown}"
    return _scrub(line)


def _scrub(text: str) -> str:
    """A last guard: a message never carries a Python repr."""
    return "invalid value" if any(bad in text for bad in _INTERNAL) else text


def problems(errors: Sequence[Any]) -> list[tuple[str, str]]:
    """(path, line) for each problem, the errors of one union folded into one."""
    out: list[tuple[str, str]] = []
    unions: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    order: list[str] = []
    for err in errors:
        head, branch, full = _split(err.get("loc", ()))
        if branch is None:
            order.append(f"\0{len(out)}")
            out.append((full, _line(full, err)))
            continue
        if head not in unions:
            unions[head] = []
            order.append(head)
        unions[head].append((branch, full, err))
    lines = {f"\0{i}": [item] for i, item in enumerate(out)}
    for head, items in unions.items():
        matched = [(p, e) for _, p, e in items if not _is_type_error(e)]
        if matched:
            seen: dict[str, tuple[str, str]] = {}
            for path, err in matched:
                seen.setdefault(_line(path, err), (path, _line(path, err)))
            lines[head] = list(seen.values())
            continue
        wanted: list[str] = []
        for branch, _, _ in items:
            word = type_words(branch)
            if word not in wanted:
                wanted.append(word)
        top = [e for _, p, e in items if p == head]
        value = (top[0] if top else items[0][2]).get("input")
        allowed = ", or ".join(wanted)
        lines[head] = [(head, _scrub(f"{head}: must be {allowed} (got {given(value)})"))]
    return [item for key in order for item in lines[key]]


def describe(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line for the client (the first ten problems) and the first problem's path."""
    found = problems(errors)
    if not found:
        return "invalid request", None
    text = "; ".join(line for _, line in found[:MAX_PROBLEMS])
    return text, found[0][0] or None
