"""Configuration files: YAML in, pydantic models out, errors that name the field.

Every configuration of duplexgym (reward specs and their term parameters, train configs, corpus
build parameters) is a pydantic model or a pydantic dataclass built with :data:`STRICT`: unknown
fields, non-finite numbers and numbers written as text are refused. :func:`explain` turns a
``pydantic.ValidationError`` into one line per problem, each starting with the field's path
(``terms.pause.params.speech_penalty: expected a number, got 'lots'``,
``axes[1]: unknown axis 'turns'; known: ...``). The field types below make the messages read the
same everywhere.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

#: The model config of every configuration class: unknown fields refused, NaN and infinities
#: refused, instances immutable.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, validate_default=False)


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads a number like 1e-4 as text: write 1.0e-4)"
            except ValueError:
                pass
        raise PydanticCustomError("number_type", "expected a number, got {value}{hint}",
                                  {"value": repr(value), "hint": hint})
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "expected a finite number, got {value}", {"value": value})
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("integer_type", "expected an integer, got {value}", {"value": repr(value)})
    return value


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "expected true or false, got {value}", {"value": repr(value)})
    return value


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "expected str, got {value}", {"value": repr(value)})
    return value


#: A finite float; ints are accepted, booleans and text are not.
Number = Annotated[float, BeforeValidator(_number)]
#: An int; an integral float (``2.0``) is accepted, booleans and text are not.
Integer = Annotated[int, BeforeValidator(_integer)]
#: ``true`` or ``false``, nothing else.
Flag = Annotated[bool, BeforeValidator(_flag)]
#: A string, nothing else.
Text = Annotated[str, BeforeValidator(_text)]


def _http_url(value: Any) -> Any:
    value = _text(value)
    if not re.match(r"https?://", value):
        raise PydanticCustomError("url_scheme", "must start with http:// or https://, got {value}", {"value": repr(value)})
    return value


#: A server address: a string starting with ``http://`` or ``https://``.
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def choice(*values: str):
    """A string type accepting only ``values`` (the error lists them)."""
    known = ", ".join(values)

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError("choice", "expected str, one of {known}; got {value}",
                                      {"known": known, "value": repr(value)})
        if value not in values:
            raise PydanticCustomError("choice", "unknown value {value}; known: {known}",
                                      {"known": known, "value": repr(value)})
        return value

    return Annotated[str, BeforeValidator(check)]


def located(where: str, message: str) -> PydanticCustomError:
    """An error whose message already names its field (``where``), e.g. an item of a list."""
    return PydanticCustomError("located", "{where}: {message}", {"where": where, "message": message})


# --- turning errors into lines ---------------------------------------------------------------------


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_of(cls) -> dict[str, Any] | None:
    """Field name -> annotation of a pydantic model or (pydantic) dataclass, else None."""
    fields = getattr(cls, "model_fields", None)
    if fields is not None:
        return {name: f.annotation for name, f in fields.items()}
    dataclass_fields = getattr(cls, "__dataclass_fields__", None)
    if dataclass_fields is not None:
        hints = typing.get_type_hints(cls, include_extras=False)
        return {name: hints.get(name, f.type) for name, f in dataclass_fields.items()}
    return None


def _resolve(root, loc: tuple):
    """The class found by walking ``loc`` through ``root``'s field annotations (or None)."""
    current = root
    for part in loc:
        current = _unwrap(current)
        fields = _fields_of(current)
        if fields is not None and isinstance(part, str) and part in fields:
            current = fields[part]
            continue
        args = typing.get_args(current)
        origin = typing.get_origin(current)
        if origin in (dict,) and len(args) == 2:
            current = args[1]
        elif origin in (list, tuple) and args:
            current = args[0]
        else:
            return None
    return _unwrap(current)


def _unwrap(annotation):
    """``X | None`` and ``Annotated[X, ...]`` -> ``X`` (the first model-like member of a union)."""
    for _ in range(4):
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = next((a for a in members if _fields_of(_unwrap(a)) is not None), members[0])
        else:
            break
    return annotation


_MESSAGES = {
    "missing": "required field is missing",
    "greater_than_equal": "must be >= {ge}, got {input}",
    "greater_than": "must be > {gt}, got {input}",
    "less_than_equal": "must be <= {le}, got {input}",
    "less_than": "must be < {lt}, got {input}",
    "finite_number": "expected a finite number, got {input}",
    "dict_type": "expected a mapping, got {kind}",
    "model_type": "expected a mapping, got {kind}",
    "model_attributes_type": "expected a mapping, got {kind}",
    "dataclass_type": "expected a mapping, got {kind}",
    "list_type": "expected a list, got {kind}",
    "tuple_type": "expected a list, got {kind}",
    "too_short": "expected at least {min_length} item(s), got {actual_length}",
    "too_long": "expected at most {max_length} item(s), got {actual_length}",
    "string_type": "expected str, got {input!r}",
    "bool_type": "expected true or false, got {input!r}",
}


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def problems(exc: ValidationError, root=None) -> list[tuple[str, str]]:
    """``(field path, what is wrong)`` per error of ``exc`` (path ``""`` for the whole object);
    ``root``: the class that was validated, so an unknown field's message lists the known ones."""
    out = []
    for error in exc.errors(include_url=False):
        kind, loc = error["type"], tuple(error["loc"])
        where = _path(loc)
        if kind == "located":
            ctx = error.get("ctx") or {}
            out.append((str(ctx.get("where", where)), str(ctx.get("message", error["msg"]))))
            continue
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            name = str(loc[-1]) if loc else "?"
            known = _fields_of(_resolve(root, loc[:-1]) if root is not None else None) or {}
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listed = f"{';' if not hint else ''} known: {', '.join(known)}" if known else ""
            out.append((where, f"unknown field {name!r}{hint}{listed}"))
            continue
        ctx = {k: _fmt(v) for k, v in (error.get("ctx") or {}).items()}
        value = error.get("input")
        if kind in _MESSAGES:
            message = _MESSAGES[kind].format(input=_fmt(value) if isinstance(value, (int, float)) else value,
                                             kind=type(value).__name__, **ctx)
        else:
            message = error["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(prefix)
        out.append((where, message))
    return list(dict.fromkeys(out))


def join(where: str, path: str) -> str:
    """``where`` and a field path below it: ``join("terms.pause.params", "speech_penalty")``."""
    if not where:
        return path
    return where + (path if not path or path.startswith("[") else "." + path)


def explain(exc: ValidationError, root=None, where: str = "") -> str:
    """One line per error of ``exc``, each ``path: what is wrong`` (paths below ``where``)."""
    lines = []
    for path, message in problems(exc, root):
        path = join(where, path)
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines)


def validate(cls, raw: Any, error: type[Exception], what: str):
    """``cls`` validated from ``raw``; a ``ValidationError`` comes out as ``error`` with
    :func:`explain`'s lines (``what`` names the document when the top level is not a mapping)."""
    if not isinstance(raw, dict):
        raise error(f"a {what} is a mapping of fields; got {type(raw).__name__}")
    try:
        return cls.model_validate(raw) if hasattr(cls, "model_validate") else cls(**raw)
    except ValidationError as exc:
        raise error(explain(exc, cls)) from None


def validate_section(cls, raw: Any, error: type[Exception], where: str, not_mapping: str):
    """``cls`` validated from the mapping ``raw``, a section of a larger configuration named
    ``where`` (``user_params``): ``error(not_mapping)`` when ``raw`` is no mapping, else ``error``
    with :func:`explain`'s lines, each field prefixed with ``where``."""
    if not isinstance(raw, dict):
        raise error(not_mapping)
    try:
        return cls.model_validate(raw) if hasattr(cls, "model_validate") else cls(**raw)
    except ValidationError as exc:
        raise error(explain(exc, cls, where=where)) from None
    except TypeError as exc:  # a pydantic dataclass called with an unknown keyword
        raise error(f"{where}: {exc}") from None


def load_yaml(path: str | Path, parse: Callable[[Any], Any], error: type[Exception], what: str):
    """``parse`` the YAML document at ``path`` (an empty file is ``{}``).

    Unreadable files, bad YAML and errors raised by ``parse`` come out as ``error`` with the
    file's path in front; ``what`` names the kind of file (``"reward spec"``).
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    try:
        return parse({} if raw is None else raw)
    except error as exc:
        raise error(f"{path}: {exc}") from None
