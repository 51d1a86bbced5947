"""A value too large for one message fails clearly and at once, never hangs: results
over max_frame_bytes, arguments over it, and batches that only together are over it."""

from __future__ import annotations

import pytest

from mpnet import Client, FrameTooLargeError, LocalCluster

LIMIT = 1 << 20        # 1 MiB, so the tests move little data


def blob(n):
    return b"x" * n


def size(b):
    return len(b)


@pytest.fixture
def small_frames():
    with LocalCluster(n_workers=1, threads_per_worker=1, max_frame_bytes=LIMIT) as cluster, \
            Client(cluster, max_frame_bytes=LIMIT) as client:
        yield client


def test_result_over_the_limit_fails_naming_size_limit_and_setting(small_frames):
    f = small_frames.submit(blob, 2 * LIMIT)
    with pytest.raises(FrameTooLargeError) as info:
        f.result(timeout=20)
    text = str(info.value)
    assert str(2 * LIMIT) in text or "2.0 MiB" in text
    assert str(LIMIT) in text and "max_frame_bytes" in text and "MPNET_MAX_FRAME_BYTES" in text
    assert small_frames.submit(size, b"ok").result(timeout=10) == 2


def test_argument_over_the_limit_fails_at_the_call(small_frames):
    with pytest.raises(FrameTooLargeError, match="max_frame_bytes"):
        small_frames.submit(size, b"y" * (2 * LIMIT))
    with pytest.raises(FrameTooLargeError, match="scattered value"):
        small_frames.scatter(b"z" * (2 * LIMIT))


def test_results_that_fit_one_by_one_are_fetched_together(small_frames):
    futures = [small_frames.submit(blob, LIMIT // 3, key=f"third-{i}") for i in range(5)]
    assert [len(v) for v in small_frames.gather(futures, timeout=20)] == [LIMIT // 3] * 5


def big_blob():
    return b"r" * (2 * LIMIT)


def test_reply_over_the_limit_becomes_an_error_for_the_asker(small_frames):
    with pytest.raises(Exception, match="max_frame_bytes") as info:
        small_frames.run(big_blob)
    assert "Timeout" not in type(info.value).__name__
    assert small_frames.submit(size, b"ok").result(timeout=10) == 2


def test_submit_whose_message_but_not_payload_is_over_the_limit_fails(small_frames):
    """Payloads just under the limit pass the check at the call; the SUBMIT around them
    (key, dependencies, options) is over it: the future fails, it does not hang."""
    deps = [small_frames.submit(size, b"d", key="d" * 2000 + str(i)) for i in range(40)]
    small_frames.gather(deps, timeout=20)
    f = small_frames.submit(len, [b"x" * (LIMIT - 150_000), *deps])
    with pytest.raises(FrameTooLargeError):
        f.result(timeout=20)
