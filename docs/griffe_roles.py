"""A Griffe extension: Sphinx roles in docstrings become code spans on the site.

The docstrings name other objects the Sphinx way (:class:`Guard`,
:meth:`~ws_guard.Guard.metrics`), which reads well in the source and in
``help()``, but mkdocstrings renders Markdown and would print the role's
colons. This turns each role into a code span of the name as Sphinx shows it
(``~a.b.C`` shows ``C``). mkdocs.yml loads it for docs/api.md; the package
does not import it.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

#: ``:role:`target``` with an optional ``py:`` domain; Sphinx's Python roles.
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def plain(docstring: str) -> str:
    """*docstring* with every Sphinx role written as a Markdown code span."""

    def code(match: re.Match[str]) -> str:
        target = match[2]
        return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"

    return ROLE.sub(code, docstring)


class SphinxRoles(Extension):
    """Rewrite each object's docstring as it is loaded."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
