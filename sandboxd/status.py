"""Every outcome a request can end with: the one place the set of statuses lives."""

from enum import StrEnum


class Status(StrEnum):
    """The ``status`` of a final event. Documented in docs/protocol.md."""

    OK = "ok"
    COMPILE_ERROR = "compile_error"
    VET_ISSUES = "vet_issues"  # go vet ran and reported findings
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    BUILD_LIMIT = "build_limit"  # the build failed at its file size, disk, process or files limit
    CANCELLED = "cancelled"
    BAD_REQUEST = "bad_request"
    QUEUE_FULL = "queue_full"
    INTERNAL_ERROR = "internal_error"

    @property
    def is_error(self) -> bool:
        return self is not Status.OK


class CaseStatus(StrEnum):
    """A judged case's own verdicts (``cases`` of a run), besides the limit statuses above
    (``timeout``, ``memory_limit``, ``output_limit``, ``runtime_error``) a case can end with.
    Never a request's ``status``: a request that judged its cases ends ``ok``."""

    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"


class Phase(StrEnum):
    """Where a request was when it ended."""

    QUEUE = "queue"
    BUILD = "build"
    RUN = "run"
