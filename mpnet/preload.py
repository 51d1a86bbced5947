"""Preload scripts: user code run inside a scheduler, worker or nanny as it starts.

``--preload NAME`` (or ``preload=[NAME]``) names a module (``mypkg.setup``) or a path to
a ``.py`` file. Its ``mpnet_setup(service)`` runs at the end of start-up and
``mpnet_teardown(service)`` at close; ``dask_setup`` / ``dask_teardown`` are accepted too,
so dask preload scripts move over unchanged. When ``mpnet_setup`` is a click command,
its options come from ``preload_argv`` (on the command line: the options the service's
own command does not know).

Order, and why:

- import and option parsing happen when the service object is built, before it opens a
  port or writes a scheduler file: a mistyped option costs nothing to fix;
- ``mpnet_setup`` runs once the service listens (it gets the running service); a setup
  that raises stops the start, so a half-configured worker never joins;
- ``mpnet_teardown`` runs only for a preload whose ``mpnet_setup`` ran to the end (or
  that has none), once.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any, Iterable

from .errors import PreloadError, PreloadOptionError

__all__ = ["Preload", "load_preloads", "PreloadError"]

log = logging.getLogger("mpnet.preload")


def _import(name: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.exists(path):
            raise PreloadError(f"preload file {path} does not exist")
        module_name = "mpnet_preload_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


class Preload:
    """One preload: imported and its options parsed at construction, set up and torn
    down by the service that owns it."""

    def __init__(self, name: str, argv: Iterable[str] = ()):
        self.name = name
        self.argv = list(argv)
        try:
            self.module = _import(name)
        except PreloadError:
            raise
        except Exception as e:
            raise PreloadError(f"cannot import preload {name!r}: {type(e).__name__}: {e}") from e
        self.setup_fn = getattr(self.module, "mpnet_setup", None) or \
            getattr(self.module, "dask_setup", None)
        self.teardown_fn = getattr(self.module, "mpnet_teardown", None) or \
            getattr(self.module, "dask_teardown", None)
        self._callback, self._params = self._parse()
        self._set_up = False

    def _parse(self) -> tuple[Any, dict]:
        """The function to call and its keyword arguments (a click command's options,
        parsed from ``argv`` now: an unknown option fails before the service listens)."""
        fn = self.setup_fn
        if fn is None:
            return None, {}
        import click
        if not isinstance(fn, click.Command) and hasattr(fn, "__click_params__"):
            # Options given without @click.command(). Making the command takes the
            # options off the function, so keep the command: it is the setup now.
            fn = self.setup_fn = click.command()(fn)
        if not isinstance(fn, click.Command):
            return fn, {}
        try:
            ctx = fn.make_context(f"preload {self.name}", list(self.argv),
                                  allow_extra_args=False)
        except click.ClickException as e:
            raise PreloadOptionError(f"preload {self.name!r}: bad option: "
                               f"{e.format_message()}") from e
        except click.exceptions.Exit as e:      # --help or --version: it printed them
            raise PreloadOptionError(f"preload {self.name!r} exited while parsing its options "
                               f"({' '.join(self.argv)})") from e
        return fn.callback, ctx.params

    def setup(self, service: Any) -> None:
        if self._callback is not None:
            try:
                self._callback(service, **self._params)
            except Exception as e:
                raise PreloadError(f"preload {self.name!r} failed in its setup: "
                                   f"{type(e).__name__}: {e}") from e
        self._set_up = True

    def teardown(self, service: Any) -> None:
        """Undo a setup that ran (once); nothing for one that never ran or raised."""
        if not self._set_up:
            return
        self._set_up = False
        if self.teardown_fn is None:
            return
        try:
            self.teardown_fn(service)
        except Exception:   # teardown must not stop the rest of the close
            log.exception("preload %r failed in its teardown", self.name)


def load_preloads(names: Iterable[str] | str | None, argv: Iterable[str] = ()) -> list[Preload]:
    if not names:
        return []
    if isinstance(names, str):
        names = [names]
    argv = list(argv)
    return [Preload(name, argv) for name in names]
