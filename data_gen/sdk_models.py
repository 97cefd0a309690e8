"""Reuse the throw-away pydantic models that the ``mistralai`` SDK builds on every request.

Why: the SDK's ``utils/serializers.py`` wraps each value it marshals or unmarshals in a fresh
``pydantic.create_model("Unmarshaller" | "Marshaller", body=(typ, ...))`` class, six new classes per chat
request. Building a pydantic class costs ~2 ms, so this was ~40 % of the client's CPU per row and capped the
concurrency speed-up (profiled: benchmarks/README.md). The classes depend only on the name, the type and the
constant config, so one per (name, type) is reused; values are validated exactly as before.

Installed once by ``data_gen.client``. If a future SDK stops calling ``create_model`` this way, nothing is
patched (the module's ``create_model`` must be pydantic's own).
"""

from __future__ import annotations

import threading
from typing import Any

import pydantic
from mistralai.client.utils import serializers

_original = pydantic.create_model
_cache: dict[tuple[Any, ...], type[pydantic.BaseModel]] = {}
_lock = threading.Lock()


def _cached_create_model(model_name: str, /, **fields: Any) -> type[pydantic.BaseModel]:
    """``pydantic.create_model`` memoised on its arguments; unhashable arguments (a rare type) build afresh."""
    key = (model_name, *sorted((k, _freeze(v)) for k, v in fields.items()))
    with _lock:
        try:
            model = _cache.get(key)
        except TypeError:  # the key holds an unhashable value
            return _original(model_name, **fields)
        if model is None:
            model = _cache[key] = _original(model_name, **fields)
    return model


def _freeze(value: Any) -> Any:
    """A hashable stand-in: the SDK passes ``body=(type, ...)`` and a constant ``ConfigDict`` (a dict)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def install() -> bool:
    """Patch the SDK's serializers (idempotent); True when the cache is in place."""
    if serializers.create_model is _cached_create_model:
        return True
    if serializers.create_model is not _original:
        return False  # the SDK changed: leave it alone
    serializers.create_model = _cached_create_model
    return True
