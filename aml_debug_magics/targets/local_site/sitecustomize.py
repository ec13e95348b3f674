"""Python runs this at start-up in a local SDK v1 step (this folder is first on its
``PYTHONPATH``); then the ``sitecustomize`` it hides, if any, runs as it would have.

In: ``AML_DEBUG_LOCAL_RUN`` in the environment (set by the local target). Out: an import hook
that, only when the script imports ``azureml.core.run``, lets it run and then hands it to
``aml_debug_magics.targets.local_run.patch``, so ``Run.get_context()`` answers with the step's
local run. Only ``os`` and ``sys`` (typing is not loaded either): a step that never imports azureml
pays for nothing else.
"""

import os
import sys

RUN_MODULE = "azureml.core.run"


class _PatchedLoader:
    """Runs ``azureml.core.run`` with its own loader, then patches it; the module keeps its
    own loader afterwards."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        module.__loader__ = self._loader
        module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        from aml_debug_magics.targets.local_run import patch

        patch(module)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _RunModuleFinder:
    """Finds ``azureml.core.run`` through the other finders, once, and wraps its loader."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != RUN_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchedLoader(spec.loader)
                return spec
        return None


def _run_the_hidden_sitecustomize() -> None:
    """Import the next ``sitecustomize`` on the path (a Debian python's, a user's own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import sitecustomize  # noqa: F401
    except ImportError as missing:
        if missing.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


if os.environ.get("AML_DEBUG_LOCAL_RUN") and RUN_MODULE not in sys.modules:
    sys.meta_path.insert(0, _RunModuleFinder())
_run_the_hidden_sitecustomize()
