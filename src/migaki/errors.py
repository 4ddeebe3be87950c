"""Errors a user can cause and fix; the CLI turns them into exit status 2 and one line."""


class UserError(Exception):
    """Bad input from the user (recipe, data, path, model name).

    The message is shown as is, without a traceback, so it must say what is wrong and where
    (file:line or recipe key) and, where possible, what to do.
    """


class DataError(UserError):
    """A data file cannot be read or a row is malformed; the message names file and line.

    `kind` names the problem for counting (`invalid_json`, `no_assistant`, ...)."""

    def __init__(self, path: object, line: int | None, message: str, kind: str = "invalid") -> None:
        self.path = str(path)
        self.line = line
        self.kind = kind
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class Interrupted(BaseException):
    """Training stopped on SIGINT or SIGTERM. A BaseException, as KeyboardInterrupt is, so that
    no `except Exception` on the way swallows it; the CLI exits with 128 + the signal number.

    `checkpoint` is the checkpoint written on the way out (None when nothing is resumable)."""

    def __init__(self, signum: int, step: int, run_dir: object, checkpoint: object) -> None:
        self.signum, self.step, self.run_dir, self.checkpoint = signum, step, run_dir, checkpoint
        super().__init__(f"interrupted by signal {signum} at step {step}")
