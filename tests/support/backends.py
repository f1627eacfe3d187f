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


#: Test files, as paths under tests/, whose async tests run on both backends
#: (see tests/conftest.py), but for those marked :data:`asyncio_only`. The
#: other files stay on asyncio: they step asyncio's loop, or drive servers
#: and clients that run on asyncio.
BOTH_BACKEND_FILES = frozenset(
    {
        "unit/client/test_client_validation.py",
        "unit/core/test_close_paths.py",
        "unit/core/test_core_counters.py",
        "unit/core/test_coverage_guard.py",
        "unit/core/test_first_message_hold.py",
        "unit/core/test_fast_path.py",
        "unit/core/test_handshake.py",
        "unit/core/test_hostile_parsing.py",
        "unit/core/test_middleware.py",
        "unit/core/test_mutants_drain.py",
        "unit/core/test_mutation_kills_drain.py",
        "unit/core/test_property_state_machine.py",
        "unit/core/test_scheduler.py",
        "unit/load/test_coverage_gauges.py",
        "unit/load/test_coverage_shed.py",
        "unit/load/test_load_gauges.py",
        "unit/load/test_mutation_kills_shed.py",
        "unit/load/test_shed_drain.py",
        "unit/metrics/test_coverage_apps.py",
        "unit/metrics/test_metrics.py",
        "unit/metrics/test_otel.py",
        "unit/rules/auth/test_coverage_jwt.py",
        "unit/rules/auth/test_coverage_jwt_config.py",
        "unit/rules/auth/test_coverage_redact.py",
        "unit/rules/auth/test_coverage_tokens.py",
        "unit/rules/auth/test_jwks.py",
        "unit/rules/auth/test_jwt_handshake.py",
        "unit/rules/auth/test_jwt_live.py",
        "unit/rules/auth/test_jwt_sources.py",
        "unit/rules/auth/test_mutants_auth.py",
        "unit/rules/auth/test_mutation_kills_jwt_session.py",
        "unit/rules/auth/test_refresh_limits.py",
        "unit/rules/auth/test_token_redaction.py",
        "unit/rules/limits/test_connect_rate_window.py",
        "unit/rules/limits/test_coverage_connect_rate.py",
        "unit/rules/limits/test_coverage_gaps_rate.py",
        "unit/rules/limits/test_mutants_rates.py",
        "unit/rules/limits/test_rate_limits.py",
        "unit/rules/limits/test_rate_memory_bound.py",
        "unit/rules/test_keys.py",
        "unit/rules/test_lifetime.py",
        "unit/rules/test_message_rules.py",
        "unit/rules/test_origin.py",
        "unit/rules/test_slow_consumer.py",
        "unit/test_coverage_testing.py",
        "unit/test_smoke.py",
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
