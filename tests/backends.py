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

from ws_guard._core.tasks import Job, wait_done

BACKENDS = ("asyncio", "trio")


#: Test files whose async tests run on both backends (see tests/conftest.py),
#: but for those marked :data:`asyncio_only`. The other files stay on asyncio:
#: they step asyncio's loop, or drive servers and clients that run on asyncio.
BOTH_BACKEND_FILES = frozenset(
    {
        "test_client_validation.py",
        "test_close_paths.py",
        "test_connect_rate_window.py",
        "test_core_counters.py",
        "test_coverage_apps.py",
        "test_coverage_connect_rate.py",
        "test_coverage_gaps_rate.py",
        "test_coverage_gauges.py",
        "test_coverage_guard.py",
        "test_coverage_jwt.py",
        "test_coverage_jwt_config.py",
        "test_coverage_redact.py",
        "test_coverage_shed.py",
        "test_coverage_testing.py",
        "test_coverage_tokens.py",
        "test_first_message_hold.py",
        "test_fuse.py",
        "test_handshake.py",
        "test_hostile_parsing.py",
        "test_jwks.py",
        "test_jwt_handshake.py",
        "test_jwt_live.py",
        "test_jwt_sources.py",
        "test_keys.py",
        "test_load_gauges.py",
        "test_message_rules.py",
        "test_metrics.py",
        "test_middleware.py",
        "test_mutants_auth.py",
        "test_mutants_drain.py",
        "test_mutants_rates.py",
        "test_mutation_kills_drain.py",
        "test_mutation_kills_jwt_session.py",
        "test_mutation_kills_shed.py",
        "test_origin.py",
        "test_otel.py",
        "test_property_state_machine.py",
        "test_rate_limits.py",
        "test_rate_memory_bound.py",
        "test_refresh_limits.py",
        "test_scheduler.py",
        "test_shed_drain.py",
        "test_smoke.py",
        "test_token_redaction.py",
    }
)


def on_both_backends(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """*test* as a sync test run on each backend, with its marks and fixtures.

    The test gets an ``anyio_backend`` parameter; the async function is
    passed it only if it asks for it.
    """
    signature = inspect.signature(test)
    wants_backend = "anyio_backend" in signature.parameters

    def run(**kwargs: Any) -> None:
        backend = kwargs["anyio_backend"] if wants_backend else kwargs.pop("anyio_backend")
        anyio.run(functools.partial(test, **kwargs), backend=backend)

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    if not wants_backend:
        parameter = inspect.Parameter("anyio_backend", inspect.Parameter.KEYWORD_ONLY)
        signature = signature.replace(parameters=[*signature.parameters.values(), parameter])
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.pytestmark = list(getattr(test, "pytestmark", []))  # type: ignore[attr-defined]
    return pytest.mark.parametrize("anyio_backend", BACKENDS)(run)


#: Marks an async test of a BOTH_BACKEND_FILES file that stays on asyncio
#: (pytest-asyncio runs it); a comment beside the mark says why.
asyncio_only = pytest.mark.asyncio_only


def _is_asyncio_only(test: Any) -> bool:
    return any(mark.name == "asyncio_only" for mark in getattr(test, "pytestmark", []))


def convert_module(module: Any) -> None:
    """Replace every ``async def test_*`` of *module* by :func:`on_both_backends` of it.

    Tests marked :data:`asyncio_only` are left as they are.
    """
    for name, obj in list(vars(module).items()):
        if (
            name.startswith("test_")
            and inspect.iscoroutinefunction(obj)
            and not _is_asyncio_only(obj)
        ):
            setattr(module, name, on_both_backends(obj))


async def joined(*jobs: Job[Any], timeout: float = 2.0) -> None:
    """Wait for every job (``ws_guard._core.tasks.spawn``) and re-raise the first error.

    ``asyncio.gather`` for detached tasks on any backend; fails the test after
    *timeout* seconds.
    """
    with anyio.fail_after(timeout):
        for job in jobs:
            await wait_done(job)
    for job in jobs:
        job.result()
