"""Which WebSocket paths a guard guards: prefixes of the route path.

``paths`` match the scope's path without its ``root_path`` (the route path
where the middleware sits); see :meth:`PathMatcher.guards_path`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ws_guard._core.request import route_path
from ws_guard.errors import ConfigurationError

logger = logging.getLogger("ws_guard")


class PathMatcher:
    """The guard's ``paths`` (``None``: every WebSocket path), with its once-only warnings."""

    def __init__(self, paths: Sequence[str] | None) -> None:
        self.paths = check_paths(paths)
        self._warned_prefixes: set[str] = set()
        self._matched = False  # some WebSocket path matched ``paths``
        self._warned_unmatched = False

    def guards_path(self, path: str, root_path: str = "") -> bool:
        """Whether a WebSocket at *path* is guarded (prefix match on segments).

        *path* and *root_path* are the scope's. ``paths`` match the route
        path, *path* without *root_path* (see :func:`route_path`), so
        ``paths=["/ws"]`` guards ``/ws`` in an app mounted at ``/api``
        (Starlette ``Mount``, uvicorn ``--root-path``). A prefix that names
        the mount too (``"/api/ws"``) still guards it, matched on the full
        path, and a warning says once to drop the mount part: a guard never
        guards less than either reading of its ``paths``. While nothing has
        matched, a path that ends in a prefix below a mount warns once too.
        """
        if self.paths is None:
            return True
        routed = route_path(path, root_path) or "/"  # the mount's own root routes as "/"
        for prefix in self.paths:
            if _under(routed, prefix):
                self._matched = True
                return True
        if routed != path:
            for prefix in self.paths:
                if _under(path, prefix):
                    self._warn_mount_prefix(prefix, root_path)
                    self._matched = True
                    return True
        if not self._matched and not self._warned_unmatched:
            self._warn_unmatched(routed, root_path)
        return False

    def _warn_unmatched(self, routed: str, root_path: str) -> None:
        """Say once that ``paths`` name a route deeper in the app than the guard sits.

        A guard on the outer app of ``Mount("/api", routes=[...])`` sees
        ``/api/ws``; ``paths=["/ws"]`` never matches it. Only while no
        WebSocket path has matched yet: after that, misses are the
        unguarded paths the user meant.
        """
        for prefix in self.paths or ():
            if _below_root(routed, prefix):
                self._warned_unmatched = True
                logger.warning(
                    "ws_guard paths=%r matched no WebSocket path yet, and route path %r ends "
                    "in %r (root_path=%r): paths are matched on the route path where the "
                    "middleware sits. Add the middleware to the mounted app or name the full "
                    "route path",
                    list(self.paths or ()),
                    routed,
                    prefix,
                    root_path,
                )
                return

    def _warn_mount_prefix(self, prefix: str, root_path: str) -> None:
        if prefix in self._warned_prefixes:
            return
        self._warned_prefixes.add(prefix)
        logger.warning(
            "ws_guard paths entry %r matched only the full path: the app is mounted at "
            "root_path=%r and routes without it. Guarded anyway; write the route path "
            "(paths=%r) to say what is meant",
            prefix,
            root_path,
            [route_path(p, root_path) or "/" for p in self.paths or ()],
        )


def _under(path: str, prefix: str) -> bool:
    """*path* is *prefix* or lies below it, on a segment boundary."""
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _below_root(path: str, prefix: str) -> bool:
    """*prefix* occurs in *path* past its start, on segment boundaries (``/api/ws`` vs ``/ws``)."""
    start = path.find(prefix, 1)
    while start > 0:
        end = start + len(prefix)
        if prefix.endswith("/") or end == len(path) or path[end] == "/":
            return True
        start = path.find(prefix, start + 1)
    return False


def check_paths(paths: Sequence[str] | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    if isinstance(paths, str):
        raise ConfigurationError(f"paths must be a list of prefixes, not the string {paths!r}")
    checked = tuple(paths)
    if not checked:
        # An empty list read from an unset setting must not switch protection off.
        raise ConfigurationError(
            f"paths must name at least one prefix, not {paths!r}; "
            "leave paths=None (the default) to guard every WebSocket path"
        )
    for path in checked:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"paths entries must start with '/', not {path!r}")
        # A route path carries no query, fragment or surrounding blanks: such a
        # prefix would never match, and its endpoint would go unguarded.
        if path != path.strip() or "?" in path or "#" in path:
            raise ConfigurationError(
                f"paths entries are route paths without blanks, '?' or '#', not {path!r}"
            )
    return checked
