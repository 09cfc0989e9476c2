"""The Python API. The core owns the order: validate → plan → deploy → test → teardown."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import config as config_file
from . import plugins as plugin_loader
from .client import EndpointError
from .errors import (DeployerError, DeployFailed, ExitCode, Interrupted, NotFound,
                     TeardownIncomplete, UsageError)
from .state import CorruptRecord, Deployment, StateStore, check_name, name_from
from .target import DeployContext, PlannedResource, Target
from .tester import TestOptions, TestReport

log = logging.getLogger("deployer")
DEFAULT_TARGET = "local"


@dataclasses.dataclass
class Plan:
    target: str
    name: str
    repository: str
    models: list[str]
    resources: list[PlannedResource]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TeardownReport:
    name: str
    target: str | None
    #: False when no deployment of that name was recorded (nothing to do)
    found: bool
    #: resources removed now, and those that were already gone: [{"kind", "id"}]
    removed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    already_gone: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: resources that could not be removed or verified: [{"kind", "id", "error"}]
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunReport:
    name: str
    target: str
    passed: bool
    exit_code: int
    deployment: dict[str, Any] | None
    test: TestReport | None
    teardown: TeardownReport | None
    #: the one-line error that ended the run early (deploy failure, bad sample...), if any
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "passed": self.passed,
                "exit_code": self.exit_code, "error": self.error,
                "deployment": self.deployment,
                "test": self.test.to_dict() if self.test else None,
                "models": self.test.to_dict()["models"] if self.test else [],
                "teardown": self.teardown.to_dict() if self.teardown else None}


class Deployer:
    """One configured core: a state directory, the installed targets and a progress sink."""

    def __init__(self, state_dir: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None, plugins: Iterable[object] = (),
                 entry_points: bool = True, disabled: Iterable[str] = ()):
        self.store = StateStore(state_dir)
        self.progress = progress or log.info
        self.registry = plugin_loader.load(plugins, entry_points=entry_points, disabled=disabled)

    # -- helpers ---------------------------------------------------------------------------
    def _target(self, name: str, options: Mapping[str, Any] | None) -> Target:
        return self.registry.create(name, dict(options or {}), self.progress)

    @staticmethod
    def resolve(config: str | os.PathLike | config_file.Config | None, target: str | None = None,
                name: str | None = None, options: Mapping[str, Any] | None = None,
                default: str | None = DEFAULT_TARGET) -> tuple[str | None, str | None,
                                                              dict[str, Any]]:
        """The target, name and options a command taking ``config=`` uses: explicit values
        over the config file's, the target defaulting to ``default``."""
        target, name, options = config_file.resolve(config, target, name, options)
        return target or default, name, options

    def _notify(self, hook: str, **kwargs: Any) -> None:
        try:
            getattr(self.registry.pm.hook, hook)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - an observer must not change the outcome
            self.progress(f"warning: a plugin's {hook} failed: {type(exc).__name__}: {exc}")

    def _kept(self, target: str, existing: Deployment | None,
              options: Mapping[str, Any]) -> dict[str, Any]:
        """The recorded options an update keeps: all, except that a new ``gpu`` drops the
        instance type it picked last time (unless that is given again)."""
        kept = dict(existing.options) if existing else {}
        cls = self.registry.get(target)
        if "gpu" in options and cls.hardware:
            from . import hardware

            for name in hardware.option_names(cls.hardware) - set(options):
                kept.pop(name, None)
        return kept

    @staticmethod
    def _public(target: Target) -> dict[str, Any]:
        secret = {opt.name for opt in target.options if opt.secret}
        return {k: v for k, v in target.settings.items() if k not in secret}

    # -- commands --------------------------------------------------------------------------
    def validate(self, repository: str | os.PathLike, target: str | None = None,
                 options: Mapping[str, Any] | None = None, *,
                 config: str | os.PathLike | config_file.Config | None = None):
        """Load and check the repository, then the target's rules. Returns the Repository.

        Every command that takes a target also takes ``config``: a config file (see
        :mod:`deployer.config`) whose target, name and options the explicit arguments override.
        The target defaults to ``local``."""
        from .repository import Repository

        target, _, options = self.resolve(config, target, None, options)
        repo = Repository.load(repository)
        self._target(target, options).validate(repo)
        return repo

    def plan(self, repository: str | os.PathLike, target: str | None = None,
             name: str | None = None, options: Mapping[str, Any] | None = None, *,
             config: str | os.PathLike | config_file.Config | None = None) -> Plan:
        """What a deploy would create. Writes nothing anywhere (see :meth:`export`)."""
        from .repository import Repository

        target, name, options = self.resolve(config, target, name, options)
        repo = Repository.load(repository)
        impl = self._target(target, options)
        impl.validate(repo)
        name = check_name(name or default_name(repo.path, target))
        return Plan(target=target, name=name, repository=str(repo.path),
                    models=impl.models_served(repo), resources=impl.plan(repo, name))

    def export(self, repository: str | os.PathLike, directory: str | os.PathLike,
               target: str | None = None, name: str | None = None,
               options: Mapping[str, Any] | None = None, *,
               config: str | os.PathLike | config_file.Config | None = None) -> list[Path]:
        """Write the target's deployment documents for what ``plan`` shows into ``directory``
        (see :meth:`Target.export`); returns the files written. UsageError (exit 2) when the
        target has nothing to export, before anything is written."""
        from .repository import Repository

        target, name, options = self.resolve(config, target, name, options)
        repo = Repository.load(repository)
        impl = self._target(target, options)
        if type(impl).export is Target.export:
            raise UsageError(f"target {target} has nothing to export",
                             hint="--export is for targets that write deployment documents, "
                                  "such as azure")
        impl.validate(repo)
        name = check_name(name or default_name(repo.path, target))
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"cannot export to {directory}: it is a file",
                             hint="pass a folder; it is created if missing")
        try:
            return [Path(p) for p in impl.export(repo, name, folder)]
        except OSError as exc:
            raise UsageError(f"cannot export to {directory}: {exc.strerror or exc}",
                             hint="pass a folder you can write") from None

    def deploy(self, repository: str | os.PathLike, target: str | None = None,
               name: str | None = None, options: Mapping[str, Any] | None = None,
               update: bool = False, *,
               config: str | os.PathLike | config_file.Config | None = None) -> Deployment:
        """Deploy and block until it answers. Raises DeployFailed (the record stays, so
        ``teardown(name)`` removes what was created) or a UsageError (nothing created).

        With ``update``, deployment ``name`` must exist on the same target; the target's
        ``update`` replaces what it serves (see :meth:`Target.update`)."""
        from .repository import Repository

        target, name, options = self.resolve(config, target, name, options)
        repo = Repository.load(repository)
        name = check_name(name or default_name(repo.path, target))
        existing = self._for_update(name, target) if update else None
        # an update keeps the recorded options unless given again
        impl = self._target(target, {**self._kept(target, existing, options or {}),
                                     **(options or {})})
        impl.validate(repo)
        previous: tuple = ()
        if existing:
            deployment = existing
            previous = (deployment.repository, deployment.options, deployment.models,
                        deployment.deploy_seconds)
            deployment.repository, deployment.options = str(repo.path), self._public(impl)
            deployment.models = impl.models_served(repo)
            deployment.status = "updating"
            self.store.save(deployment)
        else:
            deployment = Deployment(name=name, target=target, repository=str(repo.path),
                                    models=impl.models_served(repo),
                                    options=self._public(impl))
            self.store.reserve(deployment)
        context = DeployContext(deployment, lambda: self.store.save(deployment), self.progress,
                                self.store.work_dir(name))
        started = time.monotonic()
        self.progress(f"{'updating' if update else 'deploying'} {name} on {target}")
        error: DeployerError | None = None
        try:
            (impl.update if update else impl.deploy)(repo, context)
        except DeployerError as exc:
            error = exc
            raise
        except KeyboardInterrupt:
            error = Interrupted(f"deploy of {name} interrupted; what was created is recorded",
                                hint=f"run 'deployer teardown {name}'")
            raise error from None
        except Exception as exc:
            error = DeployFailed(f"deploy of {name} failed: {type(exc).__name__}: {exc}",
                                 hint=f"run 'deployer teardown {name}' to remove what was "
                                      "created")
            raise
        finally:
            deployment.deploy_seconds = round(time.monotonic() - started, 3)
            # a failed update leaves the previous version serving (Target.update's contract)
            deployment.status = ("ready" if update and not isinstance(error, Interrupted)
                                 else "failed") if error else "ready"
            if update and error:
                (deployment.repository, deployment.options, deployment.models,
                 deployment.deploy_seconds) = previous
            deployment.error = (f"update failed: {error}" if update else str(error)) \
                if error else None
            self.store.save(deployment)
            if error and not update and not deployment.resources:
                self.store.forget(name)  # nothing was created: nothing to tear down
            self._notify("deployer_deploy_finished", deployment=deployment, error=error)
        self.progress(f"{name} is ready after {deployment.deploy_seconds:.1f}s")
        return deployment

    def _for_update(self, name: str, target: str) -> Deployment:
        try:
            deployment = self.store.load(name)
        except NotFound:
            raise UsageError(f"no deployment named {name!r} to update",
                             hint="deploy it first (without --update)") from None
        if deployment.target != target:
            raise UsageError(f"{name!r} is deployed on {deployment.target}, not {target}",
                             hint=f"pass --target {deployment.target}, or tear it down first")
        if deployment.status == "updating":
            # a cut-off update (killed, say) left it so; the target's update copes with it
            self.progress(f"{name} was left 'updating' by an earlier update; updating again")
        elif deployment.status != "ready":
            raise UsageError(f"{name!r} is {deployment.status}; only a ready deployment can be "
                             "updated", hint=f"run 'deployer teardown {name}' and deploy again")
        return deployment

    def preflight(self, repository, target: str, options: Mapping[str, Any] | None,
                  test_options: TestOptions | None) -> None:
        """Every check ``run`` can make before creating anything: the target's options and
        rules, and the sample and expected-outputs files against the models it would serve."""
        from . import tester

        impl = self._target(target, options)
        impl.validate(repository)
        tester.prepare(repository, impl.models_served(repository), test_options or TestOptions())

    def test(self, name: str, options: TestOptions | None = None) -> TestReport:
        """Run the test step against deployment ``name``."""
        from . import tester
        from .repository import Repository

        options = options or TestOptions()
        deployment = self.store.load(name)
        if deployment.status != "ready":
            raise DeployFailed(f"deployment {name!r} is {deployment.status}, not ready",
                               hint=f"run 'deployer teardown {name}' and deploy again")
        impl = self._target(deployment.target, deployment.options)
        repo = Repository.load(deployment.repository)
        client = impl.client(deployment)
        try:
            report = tester.run(client, repo, deployment.models, name=name,
                                target=deployment.target, options=options,
                                progress=self.progress,
                                served_by=deployment.endpoint.get("served_by"),
                                metrics=impl.server_metrics(deployment))
        finally:
            client.close()
        if report.load_window:   # the cloud's own view of the load's requests
            from .compare import cloud_view

            report.cloud_time = cloud_view(impl, deployment,
                                           [dataclasses.asdict(x) for x in report.load],
                                           report.load_window, wait=options.cloud_wait,
                                           progress=self.progress)
            if report.cloud_time is not None and report.cloud_time["note"]:
                self.progress(f"warning: the cloud's metrics: {report.cloud_time['note']}")
        self._notify("deployer_test_finished", deployment=deployment, report=report)
        return report

    def teardown(self, name: str) -> TeardownReport:
        """Remove everything recorded for ``name``, newest first, and verify it is gone.

        Idempotent: an unknown name is nothing to do. A resource that cannot be removed or
        verified is recorded with its error and teardown goes on with the rest; then it raises
        TeardownIncomplete (the record stays, so running it again finishes the job). A record
        that cannot be read is torn down from what the targets find by its tags."""
        started = time.monotonic()
        try:
            deployment = self.store.load(name)
        except NotFound:
            return TeardownReport(name=name, target=None, found=False)
        except CorruptRecord as exc:
            deployment, impl = self._salvage(name, exc)
            # the unreadable record stays as it is until everything it owned is gone
            save: Callable[[], None] = lambda: None  # noqa: E731
        else:
            impl = self._target(deployment.target, deployment.options)
            save = functools.partial(self.store.save, deployment)
        deployment.status = "tearing-down"
        save()
        report = TeardownReport(name=name, target=deployment.target, found=True)
        self.progress(f"tearing down {name} ({deployment.target})")
        for resource in reversed(deployment.resources):
            if resource.status == "deleted":
                continue
            item = {"kind": resource.kind, "id": resource.id}
            try:
                removed = impl.delete(resource, deployment)
                if impl.exists(resource, deployment):
                    raise TeardownIncomplete("still exists after delete")
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one resource's failure never stops the rest
                error = str(exc) if isinstance(exc, DeployerError) else \
                    f"{type(exc).__name__}: {exc}"
                report.failed.append({**item, "error": error})
                self.progress(f"  FAILED: {resource.kind} {resource.id}: {error}")
                continue
            resource.status = "deleted"
            save()
            (report.removed if removed else report.already_gone).append(item)
            self.progress(f"  {'removed' if removed else 'already gone'}: "
                          f"{resource.kind} {resource.id}")
        report.seconds = round(time.monotonic() - started, 3)
        if report.failed:
            deployment.status = "teardown-incomplete"
            deployment.error = f"{len(report.failed)} resource(s) not removed"
            save()
            raise TeardownIncomplete(
                f"teardown of {name} incomplete: {len(report.failed)} of "
                f"{len(report.failed) + len(report.removed) + len(report.already_gone)} "
                "resource(s) not removed",
                hint=f"fix the cause and run 'deployer teardown {name}' again",
                details="\n".join(f"{f['kind']} {f['id']}: {f['error']}" for f in report.failed))
        self.store.forget(name)
        self._notify("deployer_teardown_finished", deployment=deployment, report=report)
        return report

    def _salvage(self, name: str, corrupt: CorruptRecord) -> tuple[Deployment, Target]:
        """A deployment to tear down from an unreadable record: what each target finds by the
        deployment's tags (its id when any trace of it is left, else its name). A target that
        cannot look is skipped; if none found anything and one could not look, the record
        stays (TeardownIncomplete), since what it owned may still exist there."""
        found = corrupt.salvaged
        self.progress(f"the record of {name} is unreadable ({corrupt.reason}); looking for "
                      f"what it created by its tags (id {found.get('id') or 'unknown'})")
        candidates = [found["target"]] if found.get("target") in self.registry.targets else [
            t for t, cls in self.registry.targets.items() if cls.unavailable_reason() is None]
        blind: list[str] = []
        for target in candidates:
            try:
                impl = self._target(target, found.get("options", {}) if target == found.get(
                    "target") else {})
                resources = impl.recover(name, found.get("id"))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - another target may still find it
                blind.append(f"{target}: {exc}")
                self.progress(f"  cannot look on {target}: {exc}")
                continue
            if resources:
                deployment = Deployment(name=name, target=target, repository="", models=[],
                                        options={}, id=found.get("id") or "",
                                        resources=list(resources))
                return deployment, impl
        if blind:
            raise TeardownIncomplete(
                f"the record of {name} is corrupt and {len(blind)} target(s) could not be "
                "searched for what it owned; the record stays",
                hint=f"fix the cause and run 'deployer teardown {name}' again",
                details="\n".join(blind))
        deployment = Deployment(name=name, target=found.get("target") or "?", repository="",
                                models=[], options={}, id=found.get("id") or "")
        return deployment, _NothingToRemove()

    def run(self, repository: str | os.PathLike, target: str | None = None,
            name: str | None = None, options: Mapping[str, Any] | None = None,
            test_options: TestOptions | None = None, *,
            config: str | os.PathLike | config_file.Config | None = None) -> RunReport:
        """Deploy → test (if the deploy succeeded) → teardown (always). Never raises an
        expected error after the deploy started: the outcome is in the report's exit code."""
        from .repository import Repository

        target, name, options = self.resolve(config, target, name, options)
        repo = Repository.load(repository)
        name = check_name(name or f"{default_name(repo.path, target)}-{secrets.token_hex(2)}")
        self.preflight(repo, target, options, test_options)
        deployment = test_report = teardown_report = None
        error: DeployerError | None = None
        interrupted = False
        try:
            deployment = self.deploy(repository, target, name, options)
            test_report = self.test(name, test_options)
        except DeployerError as exc:
            error = exc
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if self.store.exists(name):
                try:
                    teardown_report = self.teardown(name)
                except DeployerError as exc:
                    error = exc
        if interrupted:
            raise Interrupted(f"run of {name} interrupted; torn down"
                              if teardown_report else f"run of {name} interrupted",
                              hint=None if teardown_report else f"run 'deployer teardown {name}'")
        if isinstance(error, TeardownIncomplete):
            code = ExitCode.TEARDOWN_INCOMPLETE
        elif error is not None:
            code = error.exit_code
        elif test_report is not None and not test_report.passed:
            code = ExitCode.TEST_FAILED
        else:
            code = ExitCode.OK
        return RunReport(name=name, target=target, passed=code == ExitCode.OK,
                         exit_code=int(code),
                         deployment=deployment.to_dict() if deployment else None,
                         test=test_report, teardown=teardown_report,
                         error=str(error) if error else None)

    def rehearse(self, repository: str | os.PathLike, target: str | None = None,
                 name: str | None = None, options: Mapping[str, Any] | None = None,
                 test_options: TestOptions | None = None, *,
                 config: str | os.PathLike | config_file.Config | None = None) -> RunReport:
        """``run`` on the local twin of cloud target ``target``, with the same options. The
        target is required (here or in ``config``): there is no default cloud."""
        target, name, options = self.resolve(config, target, name, options, default=None)
        if not target:
            raise UsageError("rehearse needs --target (a cloud target such as sagemaker or "
                             "azure)")
        twin = self.registry.get(target).twin
        if not twin:
            raise UsageError(f"target {target!r} has no rehearsal twin",
                             hint="rehearse a cloud target (e.g. sagemaker, azure)")
        return self.run(repository, twin, name, options, test_options)

    def list(self) -> list[Deployment]:
        return self.store.list()

    def orphans(self) -> list[dict[str, str]]:
        """Resources our targets left on this machine that no recorded deployment owns (its
        state was lost or deleted), each with the target and how to remove it."""
        known = set()
        for deployment in self.store.list():
            known.add(deployment.id)
            known.update(str(r.data["tag"]) for r in deployment.resources if r.data.get("tag"))
        found = []
        for name, cls in self.registry.targets.items():
            if cls.unavailable_reason() is None:
                found += [{"target": name, **item} for item in cls.orphans(known)]
        return found

    def status(self, name: str) -> dict[str, Any]:
        """The stored record plus whether the deployment answers now (``live``) and, for a
        fleet, its scaling range and instance counts (``fleet``, see ``Target.fleet``)."""
        deployment = self.store.load(name)
        data = deployment.to_dict()
        data["live"] = data["fleet"] = None
        if deployment.status == "ready":
            with contextlib.suppress(DeployerError, EndpointError):
                impl = self._target(deployment.target, deployment.options)
                client = impl.client(deployment)
                try:
                    data["live"] = client.ready()
                finally:
                    client.close()
                # the instance counts the cloud reports now (current and desired)
                fleet = impl.fleet(deployment)
                data["fleet"] = dataclasses.asdict(fleet) if fleet else None
        return data

    def logs(self, name: str, lines: int = 100) -> str:
        deployment = self.store.load(name)
        return self._target(deployment.target, deployment.options).logs(deployment, lines)


class _NothingToRemove:
    """Stands in for a target when a corrupt record's resources were found nowhere."""

    def delete(self, resource, deployment) -> bool:
        return False

    def exists(self, resource, deployment) -> bool:
        return False


GENERIC_FOLDERS = {"models", "model_repository", "model-repository", "repository", "repo"}


def default_name(repository: Path, target: str) -> str:
    """``<folder>-<target>``; a generic folder name (``models``) gives way to its parent's."""
    folder = repository.parent if repository.name.lower() in GENERIC_FOLDERS else repository
    return name_from(f"{folder.name}-{target}")
