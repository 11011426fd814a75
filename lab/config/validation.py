"""How config files are validated: one base model, and pydantic's errors told as one line naming the field.

Every config file is a pydantic model built on `Model` (frozen; a key it does not declare is
an error). `validated` runs a model and raises ConfigError with its first error told by
`one_line`: ``<field path>: <what is wrong>``, e.g. ``hosts[1].address: '300.1.1.1' is not an
IPv4 address``. The path comes from pydantic's error location; the words from the error's
type and the field's own declaration (its bounds, choices, description, the model's keys),
so a model states each rule once. Validators say what is wrong by raising ValueError (about
their own field) or `problem` (about a field below them, for rules that span fields).
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
PROBLEM = "config"  # the error type of `problem`


class Model(BaseModel):
    """A config section: immutable, and an unknown key is refused rather than ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Keys where null (an empty section in YAML, `guest:`) means the section's defaults.
    null_means_default: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _null_sections_take_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.null_means_default:
            return {k: v for k, v in data.items() if v is not None or k not in cls.null_means_default}
        return data


class Document(Model):
    """A whole config file. It remembers where it was read from (`source`), which is no key in it."""

    _source: str = PrivateAttr("<defaults>")

    def model_post_init(self, context: Any) -> None:
        if context and "source" in context:
            self._source = context["source"]

    @property
    def source(self) -> str:
        return self._source


def problem(at: str | int | tuple, text: str) -> PydanticCustomError:
    """The error a validator raises about a field below its own: `at` is a key, an index, or a path of them."""
    return PydanticCustomError(PROBLEM, "{text}", {"text": text, "at": at if isinstance(at, tuple) else (at,)})


def validated(model: type[M], data: Any, *, root: str, where: tuple = (), source: str | None = None) -> M:
    """`model` validated from `data`, or ConfigError naming the wrong field (see `one_line`)."""
    try:
        return model.model_validate(data, context=None if source is None else {"source": source})
    except ValidationError as exc:
        raise ConfigError(one_line(model, exc, root=root, where=where)) from None


def one_line(model: type[BaseModel], exc: ValidationError, *, root: str, where: tuple = ()) -> str:
    """`model`'s ValidationError as one line, ``field.path: what is wrong``, about its first error.

    An unknown key in that error's section is told instead: a misspelt key explains a missing one.
    root: what to call the document when the error is about all of it ("lab.yaml");
    where: the path of the validated data in its file (("vagrant",) for the `vagrant:` section).
    """
    errors = exc.errors()
    error = errors[0]
    for other in errors:
        section = tuple(other["loc"][:-1])
        if other["type"] == "extra_forbidden" and tuple(error["loc"][:len(section)]) == section:
            error = other
            break
    loc = tuple(error["loc"])
    if error["type"] == PROBLEM:
        loc += tuple(error["ctx"]["at"])
    owner, field = _field_at(model, loc)
    return f"{_path(where + loc) or root}: {_wording(error, owner, field)}"


# Wording by error type, for errors where the input alone says it.
_NOT_A = {"int_type": "is not a whole number", "int_parsing": "is not a whole number",
          "int_from_float": "is not a whole number", "bool_type": "is not true or false",
          "bool_parsing": "is not true or false", "string_type": "is not a string",
          "float_type": "is not a number", "float_parsing": "is not a number"}
_MAPPING = ("model_type", "model_attributes_type", "dict_type")
_LIST = ("tuple_type", "list_type")


def _wording(error: Any, owner: type[BaseModel] | None, field: FieldInfo | None) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == PROBLEM:
        return ctx["text"]
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "extra_forbidden" and owner is not None:
        return f"unknown key (allowed: {', '.join(owner.model_fields)})"
    if kind == "missing":
        return f"missing ({field.description})" if field is not None and field.description else "missing"
    if kind in ("greater_than_equal", "less_than_equal") and field is not None:
        low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
        if low is not None and high is not None:
            return f"{value} is out of range ({low} to {high})"
    if kind == "literal_error" and field is not None:
        choices = typing.get_args(_bare(field.annotation))
        if choices:
            return f"{value!r} is not one of {', '.join(map(str, choices))}"
    if kind in _MAPPING:
        return f"expected a mapping, got {type(value).__name__}"
    if kind in _LIST:
        return f"expected a list, got {type(value).__name__}"
    if kind in _NOT_A:
        return f"{value!r} {_NOT_A[kind]}"
    return error["msg"]


def _path(loc: tuple) -> str:
    """('hosts', 1, 'address') -> 'hosts[1].address'."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark for an error in a mapping's key: the key names it already
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last key of `loc` and that key's field (None where it is no declared field).

    Follows the declared types: a model's field, a list's or tuple's item, a mapping's value.
    """
    tp: Any = model
    owner: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        tp = _bare(tp)
        args = typing.get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner, field = tp, tp.model_fields.get(part) if isinstance(part, str) else None
            tp = field.annotation if field is not None else None
            continue
        origin = typing.get_origin(tp)
        if origin is dict and args:
            tp = args[1]
        elif origin in (list, tuple) and args and (len(args) == 1 or args[-1] is Ellipsis):
            tp = args[0]
        elif origin is tuple and isinstance(part, int) and part < len(args):
            tp = args[part]
        else:
            return None, None
        owner, field = None, None  # inside a collection: no declared field until the next model
    return owner, field


def _bare(tp: Any) -> Any:
    """The type under Annotated[...] and Optional[...]."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def load_file(path: Path, what: str, hint: str, parse: Callable[[Any], M]) -> M:
    """The YAML file at `path` parsed by `parse`; every error is one line starting with the path.

    what: the file's role in messages ("lab config"); hint: how to point at another file.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found" + (f" ({hint})" if hint else "")) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or 'invalid YAML'}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
