"""A stand-in for the published ``mldesigner`` package (Azure ML Designer SDK), which cannot be
installed on the machine the tests run on.

It keeps only what the published package does for a ``@command_component`` function that
``mldesigner execute`` runs: the decorator (``@command_component`` and
``@command_component(name=...)``) marks the function with its component name, ``Input`` and
``Output`` describe its parameters by type, and ``mldesigner execute --source FILE --name NAME
--inputs a=1 b=2 --outputs out=PATH`` (``_cli/mldesigner_commands.py``, run by the
``bin/mldesigner`` console script as pip writes it) imports FILE, finds the component named
NAME, converts each input as its annotation says (``integer``, ``number``, ``boolean``, a path),
makes each ``uri_folder`` output's folder and calls the function. Nothing else of the
published package (compile, generate, export, azure-ai-ml integration) is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Input:
    """A component input: ``uri_folder``/``uri_file`` (a path), ``integer``, ``number``,
    ``boolean`` or ``string``."""

    def __init__(self, *, type: str = "uri_folder", default: Any = None, optional: bool = False,
                 description: str | None = None, **kwargs: Any) -> None:
        self.type, self.default, self.optional = type, default, optional
        self.description = description


class Output:
    """A component output: a folder (or file) path the function writes to."""

    def __init__(self, *, type: str = "uri_folder", description: str | None = None,
                 **kwargs: Any) -> None:
        self.type, self.description = type, description


def command_component(func: Callable | None = None, *, name: str | None = None,
                      **settings: Any) -> Callable:
    """Mark ``func`` as a command component named ``name`` (default: the function's name)."""

    def mark(function: Callable) -> Callable:
        function._is_mldesigner_component = True
        function._component_name = name or function.__name__
        function._component_settings = settings
        return function

    return mark(func) if func is not None else mark
