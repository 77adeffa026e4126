"""One validator for every config section: a section's dataclass is its schema, read from the field types.

    steps: Annotated[int, Bounds(ge=1)]             an integer >= 1
    lr: Annotated[float, Bounds(gt=0)] = 2e-5       a number > 0 (an integer is a number; true/false is neither)
    precision: Literal["auto", "float32"] = "auto"  an enum
    betas: tuple[float, float] = (0.9, 0.999)       a list of two numbers (YAML lists become tuples)
    mix: dict[str, Count | MixSource]               a mapping; `MixSource` a TypedDict (a mapping with fixed keys)
    align: StageSettings | None = None              a nested section, or null

A field without a default is required; a key the dataclass does not have is an error with a did-you-mean. Every
problem of a section is collected, each one line `<key path>: <what is wrong>, got <value>`, and raised together as
a `ConfigError`. Rules between fields (a layer that exists, a mix of known tasks) stay with the package that owns
the section, which adds its lines to the same list. `schema_rows` renders the same types for docs/config.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from components.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """A numeric range, attached as `Annotated[int, Bounds(ge=1)]`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        parts = [f"{op} {limit:g}" for op, limit in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if limit is not None]  # fmt: skip
        return " and ".join(parts)


Count = Annotated[int, Bounds(ge=1)]
NonNegative = Annotated[int, Bounds(ge=0)]
Positive = Annotated[float, Bounds(gt=0)]
Fraction = Annotated[float, Bounds(ge=0, le=1)]


class ConfigError(UserError):
    """Every problem of a config, one line each; `source` (a file) heads the message."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        head = f"{source}: " if source else ""
        if len(problems) == 1:
            super().__init__(head + problems[0])
        else:
            super().__init__(f"{head}{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def raise_problems(problems: list[str], source: str | None = None) -> None:
    if problems:
        raise ConfigError(problems, source)


def show(value: Any) -> str:
    """A value as the YAML file would spell it, kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(name: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` when a known name is close to `name`."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key(where: str, key: Any, value: Any, known: Iterable[str]) -> str:
    known = list(known)
    hint = suggest(key, known) or f" (allowed: {', '.join(map(str, known))})"
    return f"{_join(where, key)}: unknown key{hint}, got {show(value)}"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def describe(tp: Any) -> str:
    """What a valid value of type `tp` looks like, in words."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (NotRequired, Required):
        return describe(args[0])
    if origin is Annotated:
        bounds = [m.describe() for m in args[1:] if isinstance(m, Bounds)]
        return " ".join([describe(args[0]), *bounds])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return f"one of {', '.join(show(a) for a in args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({describe(args[0])})"
        return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    if origin is list:
        return f"a list of ({describe(args[0])})"
    if origin is dict or tp is dict:
        if not args or args[1] is Any:
            return "a mapping"
        keys = "" if args[0] in (str, Any) else f" of ({describe(args[0])})"
        return f"a mapping{keys} to ({describe(args[1])})"
    if is_typeddict(tp):
        return f"a mapping with {', '.join(_hints(tp))}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return words.get(tp, "anything")


_INVALID = object()


def convert(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """`value` checked against `tp` (lists become tuples, mappings become dataclasses); `_INVALID` with its
    problems appended when it does not fit."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (NotRequired, Required):  # a TypedDict key's marker: the type is inside
        return convert(args[0], value, where, problems)
    if origin is Annotated:
        inner: list[str] = []
        converted = convert(args[0], value, where, inner)
        if inner and _shape(args[0]) != "scalar":  # the inner key's own problem says more
            problems += inner
            return _INVALID
        if inner or not all(m.holds(converted) for m in args[1:] if isinstance(m, Bounds)):
            problems.append(f"{where}: expected {describe(tp)}{_hint(args[0], value)}, got {show(value)}")
            return _INVALID
        return converted
    if origin in (Union, types.UnionType):
        return _union(tp, args, value, where, problems)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        hint = suggest(value, args) if isinstance(value, str) else ""
        problems.append(f"{where}: expected {describe(tp)}{hint}, got {show(value)}")
        return _INVALID
    if origin in (tuple, list):
        return _sequence(tp, origin, args, value, where, problems)
    if origin is dict or tp is dict:
        return _mapping(tp, args, value, where, problems)
    if is_typeddict(tp) or dataclasses.is_dataclass(tp):
        return _section(tp, value, where, problems)
    if _scalar_fits(tp, value):
        return value
    problems.append(f"{where}: expected {describe(tp)}{_hint(tp, value)}, got {show(value)}")
    return _INVALID


def _hint(tp: Any, value: Any) -> str:
    """Why a number came out as text: YAML 1.1 reads `1e-4` (no dot) as a string, and quotes make one."""
    if tp not in (int, float) or not isinstance(value, str) or not _is_number(value):
        return ""
    if re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
        return f" (YAML reads {value} as text: write {value.lower().replace('e', '.0e', 1)})"
    return " (a number in quotes is text: remove the quotes)"


def _scalar_fits(tp: Any, value: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is float:  # an integer is a number; true/false is not
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shape(tp: Any) -> str:
    """mapping | list | scalar: which YAML node a type takes."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _shape(get_args(tp)[0])
    if origin is dict or tp is dict or is_typeddict(tp) or dataclasses.is_dataclass(tp):
        return "mapping"
    return "list" if origin in (tuple, list) else "scalar"


def _union(tp: Any, args: tuple, value: Any, where: str, problems: list[str]) -> Any:
    for arm in args:
        attempt: list[str] = []
        converted = convert(arm, value, where, attempt)
        if not attempt:
            return converted
    # a mapping or list that only one arm takes: that arm's own problems name the inner key
    shape = "mapping" if isinstance(value, Mapping) else "list" if isinstance(value, list | tuple) else "scalar"
    arms = [arm for arm in args if _shape(arm) == shape]
    if shape != "scalar" and len(arms) == 1:
        return convert(arms[0], value, where, problems)
    problems.append(f"{where}: expected {describe(tp)}, got {show(value)}")
    return _INVALID


def _sequence(tp: Any, origin: type, args: tuple, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"{where}: expected {describe(tp)}, got {show(value)}")
        return _INVALID
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            problems.append(f"{where}: expected {describe(tp)}, got {show(value)}")
            return _INVALID
        items = list(args)
    else:
        items = [args[0]] * len(value)
    converted = [
        convert(item, v, f"{where}[{i}]", problems) for i, (item, v) in enumerate(zip(items, value, strict=True))
    ]
    return _INVALID if _INVALID in converted else origin(converted)


def _mapping(tp: Any, args: tuple, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected {describe(tp)}, got {show(value)}")
        return _INVALID
    key_type, value_type = args or (Any, Any)
    result, ok = {}, True
    for key, item in value.items():
        if get_origin(key_type) is Literal and key not in get_args(key_type):
            problems.append(unknown_key(where, key, item, get_args(key_type)))
            ok = False
            continue
        if convert(key_type, key, f"{where} key", problems) is _INVALID:
            ok = False
            continue
        result[key] = convert(value_type, item, _join(where, key), problems)
        ok = ok and result[key] is not _INVALID
    return result if ok else _INVALID


def _section(cls: Any, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected {describe(cls)}, got {show(value)}")
        return _INVALID
    hints = _hints(cls)
    if is_typeddict(cls):
        required = cls.__required_keys__
    else:
        fields = [f for f in dataclasses.fields(cls) if f.init]
        hints = {f.name: hints[f.name] for f in fields}
        required = {
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    values, ok = {}, True
    for key, item in value.items():
        if key not in hints:
            problems.append(unknown_key(where, key, item, hints))
            ok = False
            continue
        values[key] = convert(hints[key], item, _join(where, key), problems)
        ok = ok and values[key] is not _INVALID
    for key in sorted(required - set(value)):
        problems.append(f"{_join(where, key)}: required ({describe(hints[key])}), got nothing")
        ok = False
    if not ok:
        return _INVALID
    return values if is_typeddict(cls) else cls(**values)


def build(cls: type[T], data: Any, where: str) -> T:
    """Dataclass `cls` from the mapping `data`; a `ConfigError` with every problem when it does not fit. `where`
    is the key path of `data` (`train`), the prefix of every problem's key."""
    problems: list[str] = []
    built = convert(cls, data, where, problems)
    raise_problems(problems)
    return built


def schema_rows(cls: type, where: str) -> list[tuple[str, str, str]]:
    """(key path, what it takes, default) of every field of `cls`, nested sections expanded: docs/config.md."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        arms = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        nested = [a for a in arms if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if f.default is not dataclasses.MISSING:
            default = show(f.default) if not dataclasses.is_dataclass(f.default) else "(section)"
        elif f.default_factory is not dataclasses.MISSING:
            default = show(f.default_factory())
        else:
            default = "required"
        if nested:
            rows.append((_join(where, f.name), f"a section{' or null' if type(None) in get_args(tp) else ''}", default))
            rows += schema_rows(nested[0], _join(where, f.name))
        else:
            rows.append((_join(where, f.name), describe(tp), default))
    return rows
