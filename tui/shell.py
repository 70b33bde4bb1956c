"""What the views need from the app, in one place: ``shell(node)`` for the Deployments views, which drive
the app's target registry, ``app_context(node)`` for every view (a test may host a view in a bare App
that has only a ``ctx``), ``target_registry(node)`` and ``open_view(node, mode)`` (the shell's
navigation). ``View`` and ``guarded`` live here too, so screens never import ``tui.app``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar, runtime_checkable

from textual.app import UnknownModeError
from textual.dom import DOMNode
from textual.screen import Screen

from backends.errors import ServeDeckError
from backends.target_registry import TargetRegistry
from tui.context import AppContext

if TYPE_CHECKING:
    from manifests.spec import DeploymentSpec

P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N", bound=DOMNode)


@dataclass(frozen=True)
class View:
    mode: str
    module: str
    screen_class: str
    title: str
    aliases: tuple[str, ...]


@runtime_checkable
class Shell(Protocol):
    """The app as its Deployments views use it (``tui.app.ServeDeckApp`` is one)."""

    ctx: AppContext
    registry: TargetRegistry

    def input_quiet_s(self) -> float: ...
    def action_go_back(self) -> None: ...
    def select_target(self, name: str) -> None: ...
    def refresh_targets(self) -> None: ...
    # Thread workers: each call returns its Worker at once.
    def start_local_engine(self) -> object: ...
    def stop_local_engine(self) -> object: ...
    def start_twin(self, key: str) -> object: ...
    def stop_twin(self, key: str) -> object: ...
    def apply_deployment(self, spec: DeploymentSpec) -> object: ...
    def port_forward(self, key: str) -> object: ...
    def scale_deployment(self, key: str, replicas: int) -> object: ...
    def delete_row(self, key: str) -> object: ...


def shell(node: DOMNode) -> Shell:
    app = node.app
    if not isinstance(app, Shell):
        raise RuntimeError(f"{type(node).__name__} needs the ServeDeck app, not {type(app).__name__}")
    return app


def app_context(node: DOMNode) -> AppContext:
    ctx = getattr(node.app, "ctx", None)
    if not isinstance(ctx, AppContext):
        raise RuntimeError(f"{type(node).__name__} needs an app with an AppContext as `ctx`")
    return ctx


def target_registry(node: DOMNode) -> TargetRegistry | None:
    """The app's target registry; None in an app without one (a view hosted alone in a test)."""
    registry = getattr(node.app, "registry", None)
    return registry if isinstance(registry, TargetRegistry) else None


@runtime_checkable
class Navigator(Protocol):
    """The app's view switching (``tui.app.ServeDeckApp`` is one): esc comes back to the view it left."""

    available_views: list[View]

    def action_view(self, mode: str) -> None: ...


def open_view(node: DOMNode, mode: str) -> list[Screen[object]] | None:
    """Switch to the view ``mode`` and return its screen stack; None when this app has no such view."""
    app = node.app
    if isinstance(app, Navigator):
        if not any(view.mode == mode for view in app.available_views):
            return None
        app.action_view(mode)
    else:
        try:
            app.switch_mode(mode)
        except UnknownModeError:
            return None
    try:
        return list(app.get_screen_stack(mode))
    except KeyError:
        return None


def guarded(handler: Callable[Concatenate[N, P], R]) -> Callable[Concatenate[N, P], R | None]:
    """A message handler whose ServeDeckError becomes an error toast instead of ending the app.

    Actions run from keys or the palette are guarded by the app itself; this is for ``@on`` handlers
    (a button press), whose errors Textual would otherwise treat as fatal.
    """

    @wraps(handler)
    def run(node: N, /, *args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return handler(node, *args, **kwargs)
        except ServeDeckError as err:
            node.app.notify(str(err), severity="error", timeout=12)
            return None

    return run
