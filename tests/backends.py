"""Run an async test once per anyio backend (asyncio and trio).

pytest-asyncio (auto mode) claims every ``async def`` test for asyncio, so
anyio's own plugin cannot run them on trio. :func:`on_both_backends` turns
an async test into a plain one, parametrized by ``anyio_backend``, that
runs it with ``anyio.run`` on that backend; fixtures are passed through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest

BACKENDS = ("asyncio", "trio")


def on_both_backends(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """*test* (which takes ``anyio_backend``) as a sync test run on each backend."""

    def run(**kwargs: Any) -> None:
        anyio.run(functools.partial(test, **kwargs), backend=kwargs["anyio_backend"])

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    run.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    return pytest.mark.parametrize("anyio_backend", BACKENDS)(run)
