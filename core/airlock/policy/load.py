"""Read ``airlock.yaml``: YAML → :class:`Policy`, or one :class:`PolicyError` with every problem.

Each problem reads ``<file>: <dotted.path>: <what is wrong; what to do>`` and, when the YAML
node is known, ``(line N)``. Problems never quote a value from the file that could be a secret:
keys, rule ids and regex text are shown; other values are described by their type only.

The YAML dialect is YAML 1.2-like on purpose: only ``true``/``false`` are booleans (in YAML 1.1
``exec: off`` would silently become ``false``), and a key repeated in one mapping is an error
rather than "last one wins".
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from airlock.errors import ConfigError
from airlock.policy.model import Policy

if TYPE_CHECKING:
    import yaml  # imported when a file is read: `airlock run` without --policy does without

__all__ = [
    "MAX_POLICY_BYTES",
    "PolicyError",
    "PolicyProblem",
    "load_policy",
    "load_policy_bytes",
    "parse_policy",
    "policy_from_bytes",
]

MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file.

    ``path`` is dotted (``mask.patterns[0].regex``), empty for problems of the file as a whole
    or of its YAML syntax; ``line`` and ``column`` are 1-based, when known.
    """

    source: str
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.path:
            suffix = f" (line {self.line})" if self.line is not None else ""
            return f"{self.source}: {self.path}: {self.message}{suffix}"
        if self.line is not None:
            col = f", column {self.column}" if self.column is not None else ""
            return f"{self.source}: line {self.line}{col}: {self.message}"
        return f"{self.source}: {self.message}"


class PolicyError(ConfigError):
    """A policy file that cannot be used. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[PolicyProblem], *, hint: str | None = None) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems), hint=hint)


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``; :class:`PolicyError` on any problem."""
    return policy_from_bytes(load_policy_bytes(path), str(path))


def load_policy_bytes(path: Path) -> bytes:
    """The exact bytes of the policy file at ``path`` (at most 1 MiB), read once."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PolicyError(
            [PolicyProblem(source, "", f"cannot read the policy file ({reason})")],
            hint="check the path given to --policy and that the file is readable",
        ) from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([PolicyProblem(source, "", "policy file is larger than 1 MiB")])
    return raw


def policy_from_bytes(raw: bytes, source: str) -> Policy:
    """Validate a policy file's bytes (UTF-8 YAML); ``source`` names it in messages."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = PolicyProblem(source, "", f"not UTF-8 text (bad byte at offset {exc.start})")
        raise PolicyError([problem]) from exc
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML ``text``; ``source`` names it in messages. Empty text → defaults."""
    node, data = _read_yaml(text, source)
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise PolicyError(
            [
                PolicyProblem(
                    source,
                    "",
                    f"the policy must be a mapping of sections (capture:, mask:, environment:), "
                    f"got {_kind(data)}",
                )
            ]
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_problems(exc, node, source)) from None


def _read_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    import yaml

    from airlock.policy._yaml import StrictLoader

    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([_yaml_problem(exc, source)]) from None
    except yaml.YAMLError as exc:  # errors without a position, e.g. bad stream encoding
        raise PolicyError([PolicyProblem(source, "", f"not valid YAML ({exc})")]) from None
    finally:
        loader.dispose()
    return node, data


def _yaml_problem(exc: yaml.MarkedYAMLError, source: str) -> PolicyProblem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    what = exc.problem or exc.context or "invalid YAML"
    import yaml

    if isinstance(exc, yaml.constructor.ConstructorError):
        return PolicyProblem(source, "", f"YAML error: {what}", line, column)
    message = f"YAML syntax error: {what}; check indentation, quoting and ':' after keys"
    return PolicyProblem(source, "", message, line, column)


def _problems(exc: ValidationError, root: yaml.Node | None, source: str) -> list[PolicyProblem]:
    problems = []
    for err in exc.errors(include_url=False, include_input=True):
        shown = _without_union_tags(err["loc"])
        line = _line_of(root, shown)
        problems.append(PolicyProblem(source, _dotted(shown), _describe(err), line))
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.path))


def _without_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the tags pydantic puts in paths through a discriminated union (``gateways[0].postgres``
    → ``gateways[0]``): they are not keys of the file."""
    out: list[int | str] = []
    model: type[BaseModel] | None = Policy
    annotation: Any = None
    union = False
    for part in loc:
        if isinstance(part, int):
            out.append(part)
            continue
        if union and model is not None and part not in model.model_fields:
            tagged = _union_member(annotation, part)
            if tagged is not None:
                model, union = tagged, False
                continue
        out.append(part)
        if model is None or part not in model.model_fields:
            model = None
            continue
        annotation = model.model_fields[part].annotation
        union = len(_models_in(annotation)) > 1
        model = _model_in(annotation)
    return tuple(out)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _union_member(annotation: Any, tag: str) -> type[BaseModel] | None:
    for member in _models_in(annotation):
        kind = member.model_fields.get("kind")
        if kind is not None and tag in typing.get_args(kind.annotation):
            return member
    return None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: ErrorDetails) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(err["loc"])
    if kind == "literal_error":
        return _bad_choice(err["loc"], value)
    if kind == "missing":
        return f"required key '{err['loc'][-1]}' is missing"
    expected = _EXPECTED.get(kind)
    if expected is not None:
        return f"must be {expected}, got {_kind(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in _BOUNDS:
        word, key = _BOUNDS[kind]
        return f"must be {word} {err.get('ctx', {}).get(key)}"
    return err["msg"]


_BOUNDS = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le")}
_EXPECTED = {
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "dict_type": "a mapping (key: value)",
    "tuple_type": "a list",
    "list_type": "a list",
    "string_type": "a string (quote it)",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])[:80]
    valid = sorted(_fields_at(loc[:-1]))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    listed = ", ".join(valid) if valid else "none"
    return f"unknown key {key!r}; valid keys here: {listed}"


def _bad_choice(loc: tuple[int | str, ...], value: Any) -> str:
    choices = [str(c) for c in _choices_at(loc)]
    allowed = ", ".join(choices)
    message = f"must be {allowed}" if len(choices) == 1 else f"must be one of: {allowed}"
    if not isinstance(value, str):
        return message
    if value in choices:  # a quoted number where the number is meant
        return f"{message}, written without quotes"
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def _kind(value: Any) -> str:
    """Describe a value by its YAML type only: the value itself may be a secret."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (None past a leaf)."""
    model: type[BaseModel] | None = Policy
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is not None and part not in model.model_fields and annotation is not None:
            model = _union_member(annotation, part)  # a discriminated union's tag
            annotation = None
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = _model_in(annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model is not None else []


def _choices_at(loc: tuple[int | str, ...]) -> tuple[Any, ...]:
    parent = _model_at(loc[:-1])
    name = loc[-1]
    if parent is None or not isinstance(name, str) or name not in parent.model_fields:
        return ()
    return typing.get_args(parent.model_fields[name].annotation)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (the key's line for a key), if it can be found."""
    import yaml

    node = root
    line = root.start_mark.line + 1 if root is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pair = next((kv for kv in node.value if kv[0].value == part), None)
            if pair is None:
                return line
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
