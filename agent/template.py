"""The task's argv and environment, built from the configured command and one token's fields.

Values travel as data: a ``{field}`` is replaced inside the argv element where it stands and the result
goes straight to ``exec``. Nothing here ever reaches a shell, so ``; rm -rf ~`` in a token is just text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

_FIELD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Field:
    """A ``{name}`` placeholder."""

    name: str


Part = Union[str, Field]


@dataclass(frozen=True)
class Template:
    """One argv element: literal text and placeholders."""

    parts: tuple[Part, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(part.name for part in self.parts if isinstance(part, Field))


class MissingField(KeyError):
    """The command names a field the token does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"the command uses {{{self.name}}} but the token has no field {self.name!r}"


class UnsafeValue(ValueError):
    """A value that exec cannot carry (a NUL byte)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"token field {name!r} contains a NUL byte, which no argv or environment can carry")
        self.name = name


def parse(text: str) -> Template:
    """Split ``text`` into literals and ``{name}`` fields; ``{{`` and ``}}`` are literal braces.

    Raises ValueError naming the position of an unmatched brace or a bad field name.
    """
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text[i : i + 2] in ("{{", "}}"):
            literal.append(char)
            i += 2
        elif char == "}":
            raise ValueError(f"unmatched '}}' at position {i} in {text!r} (write '}}}}' for a literal brace)")
        elif char == "{":
            end = text.find("}", i)
            name = text[i + 1 : end] if end != -1 else ""
            if end == -1 or not _FIELD.fullmatch(name):
                raise ValueError(
                    f"bad placeholder at position {i} in {text!r}: expected {{field}} with a name of "
                    "letters, digits, '_', '.' or '-' (write '{{' for a literal brace)"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Field(name))
            i = end + 1
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return Template(tuple(parts))


def as_text(value: Any) -> str:
    """A token value as argv text: strings as they are, null as empty, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render(template: Template, values: Mapping[str, str]) -> str:
    """The argv element for these values. Raises MissingField or UnsafeValue."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, Field):
            if part.name not in values:
                raise MissingField(part.name)
            value = values[part.name]
            if "\0" in value:
                raise UnsafeValue(part.name)
            out.append(value)
        else:
            out.append(part)
    return "".join(out)


def field_texts(fields: Mapping[str, Any]) -> dict[str, str]:
    """Every field as text (``as_text``): made once per task, for its argv and its environment both."""
    return {name: as_text(value) for name, value in fields.items()}


def token_values(
    token_id: str,
    fields: Mapping[str, Any],
    cache_paths: Mapping[str, str],
    texts: Optional[Mapping[str, str]] = None,
) -> dict[str, str]:
    """What ``{name}`` can refer to: the token's fields (``texts``, if made already), ``{id}``, and
    ``{cache.<entry>}``."""
    values = dict(field_texts(fields) if texts is None else texts)
    values["id"] = token_id
    values.update({f"cache.{name}": path for name, path in cache_paths.items()})
    return values


@functools.lru_cache(maxsize=1024)  # the same few field names, task after task
def env_name(field: str) -> str:
    """``PILOT_TOKEN_<NAME>``: upper case, anything but letters, digits and '_' becomes '_'."""
    return "PILOT_TOKEN_" + _ENV_UNSAFE.sub("_", field).upper()


def task_environment(
    token_id: str,
    fields: Mapping[str, Any],
    cache_paths: Mapping[str, str],
    texts: Optional[Mapping[str, str]] = None,
) -> dict[str, str]:
    """``PILOT_TOKEN_<NAME>`` for every field, ``PILOT_TOKEN_ID`` and ``PILOT_CACHE_<ENTRY>``.

    A value with a NUL byte cannot be in an environment: it is left out here, and a command that
    names the field fails with UnsafeValue from ``render``.
    """
    env = {}
    for name, text in (field_texts(fields) if texts is None else texts).items():
        if "\0" not in text:
            env[env_name(name)] = text
    env["PILOT_TOKEN_ID"] = token_id
    for name, path in cache_paths.items():
        env["PILOT_CACHE_" + _ENV_UNSAFE.sub("_", name).upper()] = path
    return env
