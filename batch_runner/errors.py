"""The one exception tree of batch_runner; each class carries its CLI exit code.

    BatchRunnerError                exit 1   root; its docstring is the default message
    ├── ConfigError                 exit 3   bad setting, price file or endpoint name
    │   └── ManifestError           exit 3   a manifest problem at file:line, field
    │       └── ManifestErrorsError exit 3   several manifest problems, one `Error:` line each
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
    ├── UnhealthyError              exit 11  `health` found a broken part (each check's line says which)
    └── RemoteError                 exit 9   fal's API failed or refused
        ├── AuthError               exit 9   401/403: the key is missing or wrong
        ├── AccountLockedError      exit 9   403 "User is locked": top up, nothing more is sent
        ├── InputRejectedError      exit 9   422: fal refused the input (terminal for the job)
        ├── TransientRemoteError    exit 9   429, 5xx, timeouts, transport: retry later (retryable)
        │   └── RateLimitedError    exit 9   429, with the server's Retry-After
        └── AmbiguousSubmitError    exit 9   a submit may or may not have been accepted (uncertain)

Exit codes are a public interface, documented in the README and in `--help`.
Messages say what failed, where, and one hint; they never contain a secret. Every class carries
a `default_hint`, so no error reaches the user without one; `shorten` bounds any quoted input.
"""

from __future__ import annotations

from typing import Any

#: The most characters of one input value a message quotes (see `shorten`).
QUOTE_CHARS = 60


def shorten(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A bounded, one-line repr of a user's value for a message: long values are cut in the middle
    and say how long they were; containers are named by kind and size, never expanded."""
    if isinstance(value, (list, tuple, dict, set)):
        kind = "mapping" if isinstance(value, dict) else "list"
        text = repr(value) if len(value) <= 8 else ""
        if text and len(text) <= limit:
            return text
        return f"a {kind} of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    keep = max(limit - 20, 10)
    return f"{text[: keep // 2]}…{text[-(keep // 2) :]} ({len(text)} characters)"


def type_name(value: Any) -> str:
    """The YAML/JSON word for a value's type, never one of our internal classes."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a value of another kind"


class BatchRunnerError(Exception):
    """batch_runner failed."""

    exit_code: int = 1
    retryable: bool = False
    #: What to do next when the raiser gave no better hint; every subclass has one.
    default_hint: str = "rerun with -v for details"

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.hint = hint  # the raiser's own hint; `user_hint` falls back to the class's
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    @property
    def user_hint(self) -> str:
        """What to do next: the raiser's hint, else the class's default (never empty)."""
        return self.hint or self.default_hint

    def lines(self) -> list[str]:
        """The error as the CLI shows it: one line per problem, each with its hint."""
        return [f"{self.message} ({self.user_hint})"]


class ConfigError(BatchRunnerError):
    """The configuration is invalid."""

    default_hint = "check the setting or file named above"

    exit_code = 3


class ManifestError(ConfigError):
    """The manifest is invalid."""

    default_hint = 'fix the manifest; see README "Manifest format"'

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


class ManifestErrorsError(ManifestError):
    """Several problems in one manifest: each is shown on its own line, then the CLI exits once."""

    default_hint = 'fix the manifest; see README "Manifest format"'
    #: The most problems listed; past it one line says how many more there are.
    LIMIT = 20

    def __init__(self, errors: list[ManifestError], more: int = 0) -> None:
        self.errors, self.more = errors, more
        total = len(errors) + more
        super().__init__(f"{total} problems in the manifest", hint=errors[0].hint if errors else None)

    def lines(self) -> list[str]:
        out = [line for err in self.errors for line in err.lines()]
        if self.more:
            out.append(f"… and {self.more} more problem(s) (fix these first; the rest are listed next time)")
        return out


class InvalidItemsError(BatchRunnerError):
    """Some sources are invalid."""

    default_hint = "fix them, or pass --skip-invalid to leave them out"

    exit_code = 4

    def __init__(self, message: str | None = None, *, hint: str | None = None, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems  # one line per invalid source, "origin: source: reason"

    def lines(self) -> list[str]:
        if not self.problems:
            return super().lines()
        limit = ManifestErrorsError.LIMIT
        out = [f"{p} ({self.user_hint})" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            out.append(f"… and {len(self.problems) - limit} more invalid source(s) ({self.user_hint})")
        return out


class BudgetExceededError(BatchRunnerError):
    """The estimated cost is over the budget."""

    default_hint = "reduce the work or raise the budget"

    exit_code = 5


class DatabaseError(BatchRunnerError):
    """The database failed."""

    default_hint = "check --db / BATCH_RUNNER_DB and that the database is up"

    exit_code = 6
    retryable = True


class DatabaseBehindError(DatabaseError):
    """The database schema is older than this version of batch-runner."""

    default_hint = "run `batch-runner db upgrade`"

    retryable = False


class DatabaseNotFoundError(DatabaseError):
    """No batch-runner database is at that location: it is missing, empty or another program's."""

    default_hint = "check --db / BATCH_RUNNER_DB, or create one with `batch-runner db upgrade`"

    retryable = False


class LeaseLostError(DatabaseError):
    """The job's lease now belongs to someone else (or to nobody): this worker must let it go."""

    default_hint = "nothing to do: another worker owns the job now"

    retryable = False


class ProbeError(BatchRunnerError):
    """A source could not be probed."""

    default_hint = "check that the source is a readable video or image file"

    exit_code = 7


class ToolMissingError(BatchRunnerError):
    """A required external tool is not installed."""

    default_hint = "install ffmpeg: `sudo apt-get install ffmpeg` or `brew install ffmpeg`"

    exit_code = 8


class JobsFailedError(BatchRunnerError):
    """Some jobs failed."""

    default_hint = "see the summary; `batch-runner retry` runs them again"


class RunInterruptedError(BatchRunnerError):
    """Interrupted; in-flight jobs are recorded and a later run resumes them."""

    default_hint = "run the same command again to resume"

    exit_code = 130


class ReconcileMismatchError(BatchRunnerError):
    """Our ledger and fal's usage differ."""

    default_hint = "see the report for each difference"

    exit_code = 10


class UnhealthyError(BatchRunnerError):
    """A health check failed."""

    default_hint = "see the FAIL lines above"

    exit_code = 11


class RemoteError(BatchRunnerError):
    """fal's API failed."""

    default_hint = "check FAL_KEY, your account and https://status.fal.ai"

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

    default_hint = "check FAL_KEY (or FAL_ADMIN_KEY)"


class AccountLockedError(RemoteError):
    """The fal account is locked."""

    default_hint = "top up your fal account; nothing more is sent"


class InputRejectedError(RemoteError):
    """fal refused the input."""

    default_hint = "fix the input named in fal's answer"


class TransientRemoteError(RemoteError):
    """fal's API failed for now; the call can be repeated."""

    default_hint = "retry later"

    retryable = True


class RateLimitedError(TransientRemoteError):
    """fal's API asked us to slow down."""

    default_hint = "slow down: lower --concurrency"

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class AmbiguousSubmitError(RemoteError):
    """A submit went out but no answer came back: it may or may not have been accepted."""

    default_hint = "run `batch-runner resolve` before retrying, to avoid paying twice"


#: Every documented exit code, for `--help` and the README test.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "some jobs failed (run/work), or an unexpected failure",
    2: "usage error (bad option or argument)",
    ConfigError.exit_code: "invalid manifest, configuration or price file; or no such job or batch",
    InvalidItemsError.exit_code: "invalid sources (--skip-invalid leaves them out); 0 jobs with --require-jobs",
    BudgetExceededError.exit_code: "estimated cost over --max-cost or the budget; a run stopped dispatching at it",
    DatabaseError.exit_code: "database unreachable, failing or behind (run `batch-runner db upgrade`)",
    ProbeError.exit_code: "a source could not be probed",
    ToolMissingError.exit_code: "ffprobe/ffmpeg not installed",
    RemoteError.exit_code: "fal refused the key or the account is locked; nothing more was sent",
    ReconcileMismatchError.exit_code: "reconcile found spend that our ledger and fal's usage disagree on",
    UnhealthyError.exit_code: "`health` found a broken part: database, schema, ffprobe, fal or a stale lease",
    130: "interrupted (Ctrl-C, SIGTERM): in-flight jobs are recorded and resume on the next run",
}
