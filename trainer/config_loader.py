"""Typed loading of the config tree: TOML file + dotted overrides -> nested dataclasses.

    cfg = load_config(TrainerConfig, "trainer/configs/debug.toml", ["train.steps=100", "meta.mode=fomaml"])

Every value is checked against the dataclass field's type (int, float, bool, str, Literal[...], lists
of those, nested dataclasses); an unknown key, a wrong type or a Literal outside its choices raises a
``ValueError`` naming the dotted key and what is allowed, so a typo in a config or an override fails
before any work starts. Override values are parsed as TOML literals (``3``, ``1e-3``, ``true``,
``[256, 128]``, ``"x"``), falling back to a bare string (``meta.adapt=dense``).

One loader for every config of the project: the trainer's tree, the ETL's ``EtlConfig`` (whose
command-line options :func:`add_options` generates from the fields: name, type, default and the
docstring under each field as the help), the delivery config and its sections, and the pipeline's
run spec. A field may carry loader metadata (``field(metadata=option(...))``): ``parse`` (text -> value,
e.g. ``"2h"`` -> ``timedelta``), and for the generated option ``flag``, ``metavar``, ``choices``,
``show`` (how the default is printed) or ``cli=False`` (no option). Standard library only: Airflow
DAG files, the Spark image and KFP components import it without torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import inspect
import itertools
import json
import math
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ValueError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a table, got {value!r}")
        _, item_tp = typing.get_args(tp) or (str, Any)
        return {k: _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a table of {_type_name(tp)} settings, got {value!r}")
        return build(tp, value, prefix=key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ValueError(f"{key}: expected {_type_name(tp)}, got boolean {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a (nested) dict, type-checking every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)} in {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in [{prefix}]" if prefix else ""
        raise ValueError(f"missing required config key(s) {', '.join(missing)}{where}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        parse = fields[name].metadata.get("parse")
        if parse is not None:  # it takes its own result type too (a value given in Python)
            try:
                value = parse(value)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ValueError as e:  # the section's own validation: say which section
        if type(e) is not ValueError or not prefix or str(e).startswith(prefix):
            raise
        raise ValueError(f"{prefix}: {e}") from None


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (returns a new dict)."""
    out = _deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {p} is a value, not a section")
            node = child
        node[leaf] = _parse_literal(text.strip())
    return out


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_file(path: str | Path) -> dict[str, Any]:
    """The table in a ``.toml`` file (or a ``.json`` one: an object), not yet typed.

    Raises:
        FileNotFoundError: no such file. ValueError: not valid TOML/JSON, or not a table.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} not found")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a table of settings, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a TOML (or JSON) file (optional) plus dotted overrides."""
    data = read_file(path) if path is not None else {}
    return build(cls, apply_overrides(data, overrides or []))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/TOML-ready data (for logs, checkpoints, the metrics file, a
    pipeline's run spec): tuples as lists, times as ISO text, durations in seconds.
    ``build(type(cfg), to_dict(cfg)) == cfg``."""
    return _plain(cfg)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def toml_literal(value: Any) -> str:
    """``value`` (plain data, :func:`to_dict`) as a TOML literal, the form of an override:
    ``f"key={toml_literal(v)}"`` reads back as ``v``."""
    value = _plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_literal, value)) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {toml_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"{value!r} has no TOML form")


# Command-line options generated from the fields -------------------------------------------------


def option(
    *,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
    show: Callable[[Any], str] | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """A field's loader metadata (module docstring):
    ``k: int = field(default=32, metadata=option(flag="--k"))``."""
    meta = {"parse": parse, "flag": flag, "metavar": metavar, "choices": choices, "show": show}
    return {k: v for k, v in meta.items() if v is not None} | {"cli": cli}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (and of its bases), one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # a class without source (built-in, or made at runtime)
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_of(f: dataclasses.Field) -> str:
    """The option of field ``f``: its ``flag`` metadata, else ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """One option per field of ``cls`` (``cli=False`` fields excepted; required fields first):
    type and choices from the annotation, help from the field's docstring, the default shown.
    Options the user does not give stay None (:func:`given_options`), so they do not overwrite a
    config file's values."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    required_first = sorted(
        dataclasses.fields(cls),
        key=lambda f: (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ),
    )
    for f in required_first:
        if not f.init or not f.metadata.get("cli", True):
            continue
        tp, meta = hints[f.name], f.metadata
        help_ = docs.get(f.name, "").replace("``", "").replace("%", "%%")
        if f.default is not dataclasses.MISSING:
            shown = meta["show"](f.default) if "show" in meta else f.default
            help_ += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = typing.get_args(tp)
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if tp in (int, float) and "parse" not in meta:
                kwargs["type"] = tp
            elif tp is not str and "parse" not in meta and "choices" not in kwargs:
                kwargs["type"] = _parse_literal  # a list or a table, written as a TOML literal
            kwargs["metavar"] = meta.get("metavar")
        parser.add_argument(flag_of(f), **kwargs)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (see :func:`add_options`)."""
    return {
        f.name: value
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and (value := getattr(args, f.name, None)) is not None
    }
