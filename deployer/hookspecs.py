"""Hooks a triton-deployer plugin can implement. These docstrings are the spec.

Plugins are modules or objects registered under the ``deployer.targets`` entry-point group
(built-in targets register the same way). Implement a hook with ``@deployer.hookimpl``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("deployer")
hookimpl = pluggy.HookimplMarker("deployer")


@hookspec
def deployer_register_targets():
    """Return a list of :class:`deployer.target.Target` subclasses this plugin provides.

    Called once when the plugin manager loads. Every result of every plugin is collected; two
    classes with the same ``name`` are refused with an error naming both plugins. The core, not
    the plugin, instantiates the classes.
    """


@hookspec
def deployer_deploy_finished(deployment, error):
    """Called after a deploy ends, successfully (``error`` is None) or not.

    ``deployment`` is the :class:`deployer.state.Deployment` record as stored. The return value is
    ignored; an exception here is reported but does not change the deploy's outcome.
    """


@hookspec
def deployer_test_finished(deployment, report):
    """Called after the test step with its :class:`deployer.tester.TestReport`. Return ignored."""


@hookspec
def deployer_teardown_finished(deployment, report):
    """Called after a teardown with its :class:`deployer.api.TeardownReport`. Return ignored."""
