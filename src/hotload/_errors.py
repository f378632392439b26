"""Exceptions.  Every failure hotload reports is a ``HotloadError`` whose
message names the file and the cause, so an operator can act on one line."""

from __future__ import annotations

import errno as _errno
from typing import Any


class HotloadError(Exception):
    """Base class: anything hotload refuses or fails to do."""


class InvalidPluginError(HotloadError):
    """The file is not a loadable shared library for this machine
    (missing, empty, truncated, text, wrong architecture, an executable...)."""


class DescriptorError(HotloadError):
    """The plugin's hotload descriptor is missing, malformed or for another ABI."""


class NotAPluginError(DescriptorError):
    """A shared library without a hotload descriptor, loaded without the
    ``name=`` and ``signatures=`` that would stand in for one."""


class SignatureError(HotloadError, TypeError):
    """A C signature cannot be parsed, does not match, or a call's arguments
    do not fit it.  Also a ``TypeError`` so callers can treat it as one."""


class TypeLayoutError(SignatureError):
    """A plugin-declared type cannot be reproduced with the compiler's layout,
    is used without being declared, or clashes with another plugin's."""


class LoadError(HotloadError):
    """The dynamic loader refused the library, or a symbol is missing."""


class HookError(HotloadError):
    """A plugin's on_load refused to start or its on_unload failed."""


class HookTimeoutError(HookError):
    """A hook did not return within ``Host(hook_timeout=...)``.  It is still
    running plugin code, so its image is kept loaded."""


class NotLoadedError(HotloadError, KeyError):
    """No plugin (or version) by that name is loaded in this host."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyLoadedError(HotloadError):
    """``load`` of a name that is loaded already (``reload`` replaces it).
    Not exported: callers see a ``HotloadError``."""


class ServiceError(HotloadError):
    """A host service is missing, has another prototype than a plugin imports,
    or cannot be provided as asked."""


class HandleError(HotloadError):
    """A handle that this host never gave out, or that was released."""


class ClosedError(HotloadError):
    """The host (or plugin) has been closed."""


class TrustError(HotloadError):
    """The plugin file, or a directory above it, fails the ownership and
    permission checks, or its digest is not in the host's allow-list."""


class PreflightError(HookError):
    """The new version failed in the preflight process: crashed, hung, or
    refused; the message says which step and how.  ``external`` is True when
    the worker was killed or stopped by someone else: the build was not judged,
    and retrying the reload is worth it."""

    def __init__(
        self,
        message: str,
        *,
        step: str,
        signal_name: str | None = None,
        exit_code: int | None = None,
        rc: int | None = None,
        stderr: str = "",
        external: bool = False,
    ) -> None:
        super().__init__(message)
        self.step, self.signal_name, self.exit_code, self.rc, self.stderr = (
            step,
            signal_name,
            exit_code,
            rc,
            stderr,
        )
        self.external = external


class StateMigrationError(HookError):
    """A plugin's typed state (``HOTLOAD_STATE``) cannot follow it to the new
    build: a field changed in a way no rule covers, a migration function
    refused, or the old -> new -> old proof lost a value.  The message names
    the plugin, the field and both types; the running version keeps serving."""


class BusyError(HotloadError):
    """The plugin is in the middle of something that a reload, rollback,
    canary or release would cut across: a canary running, or a release staged
    to switch it later.  Nothing was tried; the message says what to end first."""


class CanaryRefusedError(HotloadError):
    """This build cannot run as a canary beside the version serving: its
    exports differ, it hands state over (``on_unload``) without
    ``HOTLOAD_SIDE_BY_SIDE()``, or the host counts nothing for a judge to read.
    It can still go out by reload; the message says which."""


class ReleaseError(HotloadError):
    """A release (``Host.reload_together``) was refused before anything changed:
    ``plugin`` names the plugin whose build or switch failed and ``cause``
    is that plugin's own error (a ``SignatureError``, a ``PreflightError``...)."""

    def __init__(self, message: str, *, plugin: str, cause: BaseException) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.cause = cause


class ReplayError(HotloadError):
    """A reload with ``replay=True`` was refused: the build crashed or raised
    on recorded calls the version serving answered.  ``report`` (a
    ``ReplayReport``) has the figures and the first failing inputs."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class ConfigError(HotloadError, ValueError):
    """An option given to ``Host``, ``load`` or ``Isolated`` is not valid; the
    message names the option and what it accepts.  Nothing was started."""


class ResourceError(HotloadError):
    """The process ran out of something an operation needs: file
    descriptors (``EMFILE``, ``ENFILE``) or memory.  Nothing was changed (the
    running version keeps serving); free some, or raise ``ulimit -n``, and
    retry.  ``errno`` is the system's error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


_OUT_OF = {
    _errno.EMFILE: "the process is out of file descriptors",
    _errno.ENFILE: "the system is out of file descriptors",
    _errno.ENOMEM: "out of memory",
    _errno.ENOBUFS: "out of buffer space",
}


def resource_error(exc: OSError, what: str) -> ResourceError | None:
    """``exc`` as a ``ResourceError`` saying ``what`` could not be done
    (name the file in it), or None when ``exc`` is not about running out."""
    reason = _OUT_OF.get(exc.errno or 0)
    if reason is None:
        return None
    hint = " (close some, or raise `ulimit -n`)" if "descriptors" in reason else ""
    return ResourceError(f"{what}: {reason}: {exc.strerror or exc}{hint}", exc.errno)


class BuildError(HotloadError):
    """The compiler failed; the message carries its diagnostics."""


class ControlError(HotloadError):
    """A control request failed; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class FleetError(HotloadError):
    """A fleet operation failed: Redis unreachable, a record invalid, a
    rollout refused or aborted.  The message names the plugin or key and why."""


class RolloutFailed(FleetError):
    """The rollout was aborted and its rules put back as they were before it.
    ``record`` is the rollout's final record: ``failures`` (host -> error),
    and ``not_reverted`` (host -> why) for hosts not seen back on the
    previous build; the message says how many are back."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class LockLost(FleetError):
    """Another controller took the rollout lock (ours expired): stop driving."""


class PluginCrashedError(HotloadError):
    """An isolated plugin's worker process died (a signal, ``abort``,
    ``_exit``), hung past ``call_timeout``, or broke the channel protocol,
    during this call or while this call waited for it.  The host is
    unharmed; ``on_crash`` decides what serves next.  ``signal_name`` and
    ``exit_code`` say how the worker ended; ``stderr`` is its last lines."""

    def __init__(
        self,
        message: str,
        *,
        signal_name: str | None = None,
        exit_code: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.signal_name, self.exit_code, self.stderr = signal_name, exit_code, stderr


class PluginTimeoutError(PluginCrashedError):
    """An isolated call did not return within ``call_timeout``: the worker
    was killed and the crash policy applied."""


class PluginStoppedError(PluginCrashedError):
    """An isolated call found no worker to run it: the version's worker is
    stopped (``on_crash="stop"``, a crash loop, a failed restart, the host
    closing), or crashed while this call waited for it.  Its fields are the
    crash that stopped it, when there was one."""


class PluginQuarantinedError(PluginCrashedError):
    """An isolated call was refused without reaching the worker: the same
    export with the same arguments crashed the worker ``Isolated(quarantine=)``
    times already (2 by default), so the host keeps this input away from it
    while every other input is served.  A reload clears the quarantine.  Its
    fields are the last crash this input caused."""
