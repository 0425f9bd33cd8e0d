"""The upload form's limits (serving.form_limits): the part counter and the field limit's
margin over werkzeug's read buffer. The API's answers to each limit are in test_serve.py."""

from __future__ import annotations

import inspect
import io

import pytest

from serving import form_limits
from serving.form_limits import _PartCounter


def body_of(n_parts: int, boundary: bytes = b"b0undary") -> bytes:
    parts = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % (boundary, i)
        for i in range(n_parts)
    )
    return parts + b"--%s--\r\n" % boundary


def test_the_field_limit_is_above_werkzeugs_read_buffer() -> None:
    """werkzeug checks the text-field limit against its parser's buffer too, file parts
    included: one read plus a kept delimiter tail, whose boundary fits in waitress's header
    limit. A limit at or below that sum refuses real photos (it was 64 KiB, the read size)."""
    from waitress.adjustments import Adjustments
    from werkzeug.formparser import MultiPartParser

    read = inspect.signature(MultiPartParser).parameters["buffer_size"].default
    assert read + Adjustments.max_request_header_size < form_limits.MAX_FIELD_BYTES


@pytest.mark.parametrize("read_size", [1, 3, 7, 64])
def test_the_part_counter_counts_delimiters_split_across_reads(read_size: int) -> None:
    counter = _PartCounter(io.BytesIO(body_of(5)), b"b0undary", max_parts=16)
    while counter.read(read_size):
        pass
    assert counter.delimiters == 6  # five parts and the closing delimiter


def test_the_part_counter_stops_a_form_with_too_many_parts() -> None:
    counter = _PartCounter(io.BytesIO(body_of(20)), b"b0undary", max_parts=16)
    with pytest.raises(form_limits.FormLimitExceeded, match="more than 16 parts"):
        while counter.read(7):
            pass
