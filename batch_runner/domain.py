"""Value types shared by every layer: job states, money, probe results, job specs.

Money is integer micro-USD everywhere inside the program and a decimal string at the edges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

MICRO_PER_USD = 1_000_000


class JobState(str, enum.Enum):
    """The whole lifecycle of a job; stored as its string value."""

    QUEUED = "queued"  # in the table, waiting for a worker
    SUBMITTING = "submitting"  # attempt row written, submit under way
    SUBMITTED = "submitted"  # the API accepted it; in fal's queue
    IN_PROGRESS = "in_progress"  # the model is running
    DOWNLOADING = "downloading"  # result known, output being fetched and verified
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a terminal failure (after retries)
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # the API refused the input (422): fix the manifest
    UNCERTAIN = "uncertain"  # submit outcome unknown; never resubmitted automatically

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


#: States in which a job holds one of fal's concurrency slots (counted against the in-flight cap).
IN_FLIGHT_STATES = frozenset({JobState.SUBMITTING, JobState.SUBMITTED, JobState.IN_PROGRESS})
#: States a worker follows to the end after a restart (a request id is known).
FOLLOW_STATES = frozenset({JobState.SUBMITTED, JobState.IN_PROGRESS, JobState.DOWNLOADING})


class AttemptState(str, enum.Enum):
    """One try at a job. `sending` is written before the submit goes out (write-ahead)."""

    PREPARING = "preparing"  # claimed, budget reserved, media being uploaded: nothing sent yet
    SENDING = "sending"  # the submit is going out now; no answer recorded yet
    SUBMITTED = "submitted"  # fal answered with a request id
    IN_PROGRESS = "in_progress"
    DOWNLOADING = "downloading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNSENT = "unsent"  # given up before anything was sent (fal refused to queue it, or stop)
    CANCELLED = "cancelled"
    UNCERTAIN = "uncertain"


class RunEvent(str, enum.Enum):
    """What a run tells its display (the reporter), job by job and about the run as a whole."""

    START = "start"  # the run begins: its name, jobs to do and budget
    SUBMITTED = "submitted"
    QUEUED = "queued"  # fal's queue position
    LOG = "log"  # a log line of the model (verbose)
    RETRY = "retry"  # back to the queue for a new attempt, after a delay
    FOLLOW_LATER = "follow_later"  # fal could not be read now; followed again later
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    UNCERTAIN = "uncertain"
    ERROR = "error"  # a job hit trouble it was let go from (a bug, a cancel that failed)
    LOST = "lost"  # another worker took the job over
    WARNING = "warning"
    OUTAGE = "outage"  # fal unreachable: the circuit breaker opened
    RESUMED = "resumed"  # fal reachable again


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED})


def usd_to_micro(value: str | int | Decimal) -> int:
    """Convert a USD amount (decimal string, int or Decimal; never float) to micro-USD.

    Amounts finer than a micro-dollar are rejected rather than silently rounded.
    """
    if isinstance(value, float):
        raise TypeError("money must not be a float; pass a decimal string")
    try:
        d = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    micro = d * MICRO_PER_USD
    if micro != micro.to_integral_value():
        raise ValueError(f"amount {value} is finer than a micro-dollar")
    return int(micro)


def micro_to_usd(micro: int) -> Decimal:
    """Micro-USD as an exact Decimal in dollars."""
    return Decimal(micro) / MICRO_PER_USD


def format_usd(micro: int) -> str:
    """A decimal string with at least two decimals and no trailing noise: 360000 → "0.36"."""
    d = micro_to_usd(micro).normalize()
    exponent = d.as_tuple().exponent  # an int: only NaN and infinities have a letter here
    if d == d.to_integral_value() or (isinstance(exponent, int) and -exponent < 2):
        return f"{d:.2f}"
    return f"{d:f}"


def format_seconds(seconds: Decimal) -> str:
    """A duration as people read it, the same whether ffprobe printed "35.000000" or the probe
    cache kept "35": normalised, never in exponent form (35, 35.04, 0.5)."""
    d = seconds.normalize()
    return f"{d.quantize(Decimal(1)) if d == d.to_integral_value() else d:f}"


#: Containers of still images, as ffprobe and libavformat name them (format_name): read by both
#: probe paths (probe.py's ffprobe, avprobe.py's PyAV), so neither imports the other for it.
IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe")


def is_remote(value: str, *, data_uri: bool = True) -> bool:
    """Whether a source or media value is fetched from elsewhere rather than read as a local path:
    an http(s) URL or a data URI. `data_uri=False` asks for an http(s) URL only (what an HTTP client
    or ffprobe's network options can open)."""
    return value.startswith(("http://", "https://", "data:") if data_uri else ("http://", "https://"))


def ceil_decimal(value: Decimal, quantum: Decimal = Decimal(1)) -> Decimal:
    """Round up to a multiple of quantum: ceil_decimal(Decimal("5.04")) == 6."""
    return (value / quantum).to_integral_value(rounding=ROUND_CEILING) * quantum


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe tells us about one source (a video or an image)."""

    source: str
    fingerprint: str
    kind: str  # "video" or "image"
    duration: Decimal | None  # seconds, exact as ffprobe printed it; None for images
    width: int
    height: int
    fps: str | None  # a rational like "25/1"
    codec: str
    rotation: int
    has_audio: bool
    size_bytes: int | None

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as displayed, after applying the rotation."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class Estimate:
    """The exact price of one job under one price table."""

    micro_usd: int
    billable_units: Decimal
    unit: str
    unit_price_micro_usd: int
    price_table: str  # "name@version"
    verified: bool

    @property
    def usd(self) -> str:
        return format_usd(self.micro_usd)


@dataclass(frozen=True)
class JobSpec:
    """One expanded job from a manifest; planning makes a probed, priced copy (never edits it)."""

    batch: str
    endpoint: str
    source: str | None  # path or URL of the primary media input; None for text-to-video
    media_field: str | None  # the input field the source goes into
    params: dict[str, Any]  # the full model input except media uploaded at run time
    output: str  # absolute output path
    output_root: str = ""  # the manifest's output_root: every output must stay inside it
    tags: tuple[str, ...] = ()
    project: str | None = None  # the manifest's cost centre, for chargeback in `report`
    origin: str = ""  # file:line of the manifest entry, for error messages
    key: str = ""
    fingerprint: str = ""
    probe: ProbeResult | None = None
    estimate: Estimate | None = None
    extra_media: dict[str, str] = field(default_factory=dict)  # other local media inputs


#: How a recorded bill that is not yet fal's own figure is marked in `attempts.price_source`;
#: `resolve` (and each run, for its batches) replaces it with fal's per-request billing events.
PENDING_BILLING_EVENTS = "pending: fal's billing events"  # recorded as $0 until fal says
PROVISIONAL = "provisional: "  # prefix: our price table's figure until fal's billing events confirm it


@dataclass(frozen=True)
class Actor:
    """Who did something, for the audit trail: host, process id and user."""

    host: str
    pid: int
    user: str

    @classmethod
    def current(cls) -> Actor:
        import os
        import pwd
        import socket

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        return cls(socket.gethostname(), os.getpid(), user)
