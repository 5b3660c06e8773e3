"""Value helpers of domain.py that every layer shares."""

from __future__ import annotations

import pytest

from batch_runner.domain import is_remote
from batch_runner.errors import BatchRunnerError, DatabaseError, LeaseLostError


@pytest.mark.parametrize(
    ("value", "remote", "http_only"),
    [
        ("https://cdn.example/a.mp4", True, True),
        ("http://127.0.0.1:8080/a.mp4", True, True),
        ("data:image/png;base64,iVBORw0KGgo=", True, False),
        ("media/clip01.mp4", False, False),
        ("/abs/path/clip.mp4", False, False),
        ("ftp://host/a.mp4", False, False),
        ("HTTPS://upper.case/a.mp4", False, False),  # as before: the scheme is matched as written
    ],
)
def test_is_remote_tells_urls_and_data_uris_from_local_paths(value, remote, http_only):
    assert is_remote(value) is remote
    assert is_remote(value, data_uri=False) is http_only


def test_a_lost_lease_is_a_database_error_under_the_root():
    assert issubclass(LeaseLostError, DatabaseError) and issubclass(LeaseLostError, BatchRunnerError)
    assert not LeaseLostError.retryable
    assert LeaseLostError().message.startswith("The job's lease now belongs to someone else")
