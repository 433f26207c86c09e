"""The two patch kinds of ``manifests/`` overlays, as kustomize applies them to custom resources.

    obj = apply_json_patch(obj, [{"op": "replace", "path": "/spec/x/0/args", "value": [...]}])
    obj = merge_patch(obj, {"spec": {"runPolicy": {"backoffLimit": 1}, "Master": None}})

``apply_json_patch`` is RFC 6902 (add, remove, replace, move, copy, test; ``-`` appends to a
list; ``~0``/``~1`` escapes). ``merge_patch`` is what kustomize's strategic merge does on a kind it
has no schema for (every CRD): maps merge key by key, ``null`` deletes a key, lists are replaced
whole. Both return a new object and leave their input untouched.
"""

from __future__ import annotations

import copy
from typing import Any


def _tokens(pointer: str, origin: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{origin}: JSON pointer {pointer!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, pointer: str, origin: str, *, insert: bool) -> int:
    if insert and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise ValueError(f"{origin}: {pointer}: {token!r} is not a list index")
    index = int(token)
    if index > len(container) or (index == len(container) and not insert):
        raise ValueError(f"{origin}: {pointer}: index {index} is past the end of the list")
    return index


def _parent(doc: Any, pointer: str, origin: str) -> tuple[Any, str]:
    tokens = _tokens(pointer, origin)
    if not tokens:
        raise ValueError(f"{origin}: operations on the whole document are not supported")
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer, origin, insert=False)]
        else:
            raise ValueError(f"{origin}: path {pointer} does not exist (at {token!r})")
    return node, tokens[-1]


def _get(doc: Any, pointer: str, origin: str) -> Any:
    parent, last = _parent(doc, pointer, origin)
    if isinstance(parent, dict):
        if last not in parent:
            raise ValueError(f"{origin}: path {pointer} does not exist")
        return parent[last]
    return parent[_index(parent, last, pointer, origin, insert=False)]


def _add(doc: Any, pointer: str, value: Any, origin: str) -> None:
    parent, last = _parent(doc, pointer, origin)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, pointer, origin, insert=True), value)
    else:
        raise ValueError(f"{origin}: cannot add below a scalar at {pointer}")


def _remove(doc: Any, pointer: str, origin: str) -> Any:
    parent, last = _parent(doc, pointer, origin)
    if isinstance(parent, dict):
        if last not in parent:
            raise ValueError(f"{origin}: cannot remove {pointer}: it does not exist")
        return parent.pop(last)
    return parent.pop(_index(parent, last, pointer, origin, insert=False))


def apply_json_patch(doc: Any, ops: list[dict[str, Any]], origin: str = "patch") -> Any:
    """Apply RFC 6902 ``ops`` to a copy of ``doc``.

    Raises:
        ValueError: a path that does not exist, a bad index, an unknown op, or a failed
            ``test`` (overlays use ``test`` to fail loudly when the base moves under them).
    """
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            _add(doc, path, copy.deepcopy(op["value"]), origin)
        elif kind == "remove":
            _remove(doc, path, origin)
        elif kind == "replace":
            _get(doc, path, origin)  # must exist
            _remove(doc, path, origin)
            _add(doc, path, copy.deepcopy(op["value"]), origin)
        elif kind == "move":
            _add(doc, path, _remove(doc, op["from"], origin), origin)
        elif kind == "copy":
            _add(doc, path, copy.deepcopy(_get(doc, op["from"], origin)), origin)
        elif kind == "test":
            actual = _get(doc, path, origin)
            if actual != op.get("value"):
                raise ValueError(
                    f"{origin}: test failed at {path}: expected {op.get('value')!r}, "
                    f"found {actual!r} (the overlay no longer matches its base)"
                )
        else:
            raise ValueError(f"{origin}: unknown JSON patch op {kind!r}")
    return doc


def merge_patch(doc: Any, patch: Any) -> Any:
    """Merge ``patch`` into a copy of ``doc``: maps key by key, ``None`` deletes, lists replace.

    Raises:
        ValueError: the patch uses a strategic-merge directive (``$patch``, ``$setElementOrder``,
            ...), which needs Kubernetes' schema.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise ValueError(f"strategic-merge directive {key} is not supported")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
