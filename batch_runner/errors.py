"""The one exception tree of batch_runner; each class carries its CLI exit code.

    BatchRunnerError                exit 1   root; its docstring is the default message
    ├── ConfigError                 exit 3   bad setting, price file or endpoint name
    │   └── ManifestError           exit 3   a manifest problem at file:line, field
    ├── InvalidItemsError           exit 4   plan found invalid sources (see --skip-invalid)
    ├── BudgetExceededError         exit 5   the estimate is over --max-cost / the budget
    ├── DatabaseError               exit 6   unreachable, locked or failing database
    │   ├── DatabaseBehindError     exit 6   schema older than this version: `db upgrade`
    │   ├── DatabaseNotFoundError   exit 6   --db leads to no batch-runner database: `db upgrade`
    │   └── LeaseLostError          exit 6   a job's lease moved to another worker (the worker lets it go)
    ├── ProbeError                  exit 7   one source could not be probed
    ├── ToolMissingError            exit 8   ffprobe/ffmpeg not installed
    ├── JobsFailedError             exit 1   a run ended with failed jobs (the summary lists them)
    ├── RunInterruptedError         exit 130 Ctrl-C / SIGTERM: in-flight work is recorded and resumable
    ├── ReconcileMismatchError      exit 10  our ledger and fal's usage differ (the report lists how)
    └── RemoteError                 exit 9   fal's API failed or refused
        ├── AuthError               exit 9   401/403: the key is missing or wrong
        ├── AccountLockedError      exit 9   403 "User is locked": top up, nothing more is sent
        ├── InputRejectedError      exit 9   422: fal refused the input (terminal for the job)
        ├── TransientRemoteError    exit 9   429, 5xx, timeouts, transport: retry later (retryable)
        │   └── RateLimitedError    exit 9   429, with the server's Retry-After
        └── AmbiguousSubmitError    exit 9   a submit may or may not have been accepted (uncertain)

Exit codes are a public interface, documented in the README and in `--help`.
Messages say what failed, where, and one hint; they never contain a secret.
"""

from __future__ import annotations


class BatchRunnerError(Exception):
    """batch_runner failed."""

    exit_code: int = 1
    retryable: bool = False

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(BatchRunnerError):
    """The configuration is invalid."""

    exit_code = 3


class ManifestError(ConfigError):
    """The manifest is invalid."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line, self.field = file, line, field
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}", hint=hint)


class InvalidItemsError(BatchRunnerError):
    """Some sources are invalid."""

    exit_code = 4


class BudgetExceededError(BatchRunnerError):
    """The estimated cost is over the budget."""

    exit_code = 5


class DatabaseError(BatchRunnerError):
    """The database failed."""

    exit_code = 6
    retryable = True


class DatabaseBehindError(DatabaseError):
    """The database schema is older than this version of batch-runner."""

    retryable = False


class DatabaseNotFoundError(DatabaseError):
    """No batch-runner database is at that location: it is missing, empty or another program's."""

    retryable = False


class LeaseLostError(DatabaseError):
    """The job's lease now belongs to someone else (or to nobody): this worker must let it go."""

    retryable = False


class ProbeError(BatchRunnerError):
    """A source could not be probed."""

    exit_code = 7


class ToolMissingError(BatchRunnerError):
    """A required external tool is not installed."""

    exit_code = 8


class JobsFailedError(BatchRunnerError):
    """Some jobs failed."""


class RunInterruptedError(BatchRunnerError):
    """Interrupted; in-flight jobs are recorded and a later run resumes them."""

    exit_code = 130


class ReconcileMismatchError(BatchRunnerError):
    """Our ledger and fal's usage differ."""

    exit_code = 10


class RemoteError(BatchRunnerError):
    """fal's API failed."""

    exit_code = 9

    def __init__(
        self,
        message: str | None = None,
        *,
        hint: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        body: object = None,
        reply: object = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status, self.error_type, self.body = status, error_type, body
        self.reply = reply  # the api.answers.Reply of the last call, for the outcome decision


class AuthError(RemoteError):
    """fal refused the API key."""


class AccountLockedError(RemoteError):
    """The fal account is locked."""


class InputRejectedError(RemoteError):
    """fal refused the input."""


class TransientRemoteError(RemoteError):
    """fal's API failed for now; the call can be repeated."""

    retryable = True


class RateLimitedError(TransientRemoteError):
    """fal's API asked us to slow down."""

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class AmbiguousSubmitError(RemoteError):
    """A submit went out but no answer came back: it may or may not have been accepted."""


#: Every documented exit code, for `--help` and the README test.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "some jobs failed (run/work), or an unexpected failure",
    2: "usage error (bad option or argument)",
    ConfigError.exit_code: "invalid manifest, configuration or price file",
    InvalidItemsError.exit_code: "plan found invalid sources (rerun with --skip-invalid to ignore them)",
    BudgetExceededError.exit_code: "estimated cost over --max-cost or the budget; a run stopped dispatching at it",
    DatabaseError.exit_code: "database unreachable, failing or behind (run `batch-runner db upgrade`)",
    ProbeError.exit_code: "a source could not be probed",
    ToolMissingError.exit_code: "ffprobe/ffmpeg not installed",
    RemoteError.exit_code: "fal refused the key or the account is locked; nothing more was sent",
    ReconcileMismatchError.exit_code: "reconcile found spend that our ledger and fal's usage disagree on",
    130: "interrupted (Ctrl-C, SIGTERM): in-flight jobs are recorded and resume on the next run",
}
