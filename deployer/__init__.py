"""triton-deployer: deploy, test and tear down one Triton model repository on any target.

The Python API mirrors the CLI: ``deploy``, ``test``, ``teardown``, ``run``, ``plan``,
``validate``, ``list_deployments``, ``status``, ``logs``. Each builds a :class:`Deployer` with
default settings; build one yourself to choose the state directory or progress sink.
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl

__all__ = ["Deployer", "TestOptions", "deploy", "hookimpl", "list_deployments", "logs", "plan",
           "run", "status", "teardown", "test", "validate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # keep `import deployer` light: the CLI imports it before it knows what it will run
    if name == "Deployer":
        from .api import Deployer

        return Deployer
    if name == "TestOptions":
        from .tester import TestOptions

        return TestOptions
    raise AttributeError(name)


def _default(state_dir=None, progress=None):
    from .api import Deployer

    return Deployer(state_dir=state_dir, progress=progress)


def validate(repository, target=None, options=None, *, config=None, state_dir=None,
             progress=None):
    return _default(state_dir, progress).validate(repository, target, options, config=config)


def plan(repository, target=None, name=None, options=None, *, config=None, state_dir=None,
         progress=None):
    return _default(state_dir, progress).plan(repository, target, name, options, config=config)


def deploy(repository, target=None, name=None, options=None, *, config=None, state_dir=None,
           progress=None):
    return _default(state_dir, progress).deploy(repository, target, name, options,
                                                config=config)


def test(name, options=None, *, state_dir=None, progress=None):
    return _default(state_dir, progress).test(name, options)


test.__test__ = False  # type: ignore[attr-defined]


def teardown(name, *, state_dir=None, progress=None):
    return _default(state_dir, progress).teardown(name)


def run(repository, target=None, name=None, options=None, test_options=None, *,
        config=None, state_dir=None, progress=None):
    return _default(state_dir, progress).run(repository, target, name, options, test_options,
                                             config=config)


def list_deployments(*, state_dir=None):
    return _default(state_dir).list()


def status(name, *, state_dir=None):
    return _default(state_dir).status(name)


def logs(name, lines=100, *, state_dir=None):
    return _default(state_dir).logs(name, lines)
