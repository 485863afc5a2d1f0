"""Errors a user can cause, each ending a command with one line on stderr and a non-zero exit.

`kind` names the class of error in words a program can test (the Android core raises the same
kinds: tests/conformance/manifest_cases.json). Anything else that escapes is a bug, and keeps its
traceback.
"""

import sys


class EdgeError(Exception):
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # export workers send errors back to the parent pickled: keep the kind
        return _restore, (type(self), str(self), self.kind)


def _restore(cls, message: str, kind: str):
    e = cls.__new__(cls)
    EdgeError.__init__(e, message, kind)
    return e


class ArtifactError(EdgeError):
    """The artifact on disk is missing, damaged or of another format version."""

    def __init__(self, message: str, kind: str = "artifact"):
        super().__init__(message, kind)


class RequestError(EdgeError):
    """What was asked cannot be done with this artifact: a bad budget, prompt or option."""

    def __init__(self, message: str, kind: str = "bad_request"):
        super().__init__(message, kind)


class CheckpointError(EdgeError):
    """model.pt is missing, damaged or not a cosmoe checkpoint."""

    def __init__(self, message: str, kind: str = "bad_checkpoint"):
        super().__init__(message, kind)


class ExportError(EdgeError):
    """The checkpoint cannot be exported as asked, or a step of the export failed."""

    def __init__(self, message: str, kind: str = "export_failed"):
        super().__init__(message, kind)


class MissingExtra(EdgeError):
    """A command needs packages of an extra that this install lacks."""

    def __init__(self, command: str, extra: str, module: str):
        super().__init__(f"{command} needs the '{extra}' extra, which is not installed (no module {module!r}): "
                         f"pip install 'cosmoe-edge[{extra}]'", "missing_extra")


def require(command: str, extra: str, *modules: str):
    """Raise MissingExtra unless every module imports."""
    import importlib.util

    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise MissingExtra(command, extra, m)


class CorpusError(EdgeError):
    """The training corpus is missing or too small."""

    def __init__(self, message: str, kind: str = "bad_corpus"):
        super().__init__(message, kind)


def exit_error(tool: str, msg: str, code: int = 2):
    """How every command ends on an error a user can cause: one line on stderr, no traceback, exit `code`."""
    import typer

    print(f"{tool}: error: {msg}", file=sys.stderr)
    raise typer.Exit(code)
