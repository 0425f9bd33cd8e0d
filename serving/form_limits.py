"""The upload form's limits, each refused with a message that names it.

werkzeug answers the same bare 413 for a body over the size limit, a form with too many parts
and an oversized text field, and silently drops a form it cannot parse. :class:`UploadRequest`
(Flask's request with another form parser) says which limit was hit
(:class:`FormLimitExceeded` for the form's own limits, the plain 413 for the body's size) and
answers a malformed form or a part without a name with a 400 that says what is wrong.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

__all__ = ["MAX_FIELD_BYTES", "MAX_FORM_PARTS", "FormLimitExceeded", "UploadRequest"]

MAX_FORM_PARTS = 16  # the API needs one part, 'file'; more is a client's mistake (or an attack)
# The largest text (non-file) field kept in memory. werkzeug applies this limit to its parser's
# buffer too, for file parts as well: one read (``MultiPartParser.buffer_size``, 64 KiB) plus the
# tail kept back when a read ends in what may be the start of a delimiter (at most
# ``"\r\n--" + boundary``, and the boundary comes from a header, which waitress caps at 256 KiB).
# Set to 64 KiB, it refused most photos over ~100 KB, so it must stay above read + header limit
# (tests/test_serve.py checks this against the installed werkzeug and waitress). The API uses no
# text field at all; a larger one is refused with a 413 that says to send a file part.
MAX_FIELD_BYTES = 1024 * 1024


# --- the form's limits, with accurate messages ----------------------------------------------------


class FormLimitExceeded(RequestEntityTooLarge):
    """A 413 for a form that breaks a limit other than the body's size; says which."""


class _PartCounter:
    """Reads a multipart body for werkzeug's parser, counting the part delimiters it passes."""

    def __init__(self, stream: IO[bytes], boundary: bytes, max_parts: int) -> None:
        self._stream = stream
        self._delimiter = b"--" + boundary
        self._tail = b""
        self._max_parts = max_parts
        self.delimiters = 0
        self.body_too_large = False  # the stream itself refused: the body's size limit

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except RequestEntityTooLarge:
            self.body_too_large = True
            raise
        window = self._tail + data  # a delimiter may straddle two reads
        self.delimiters += window.count(self._delimiter)
        self._tail = window[-(len(self._delimiter) - 1) :]
        # n parts have n + 1 delimiters (the last closes the form)
        if self.delimiters > self._max_parts + 1:
            raise FormLimitExceeded(
                f"the form has more than {self._max_parts} parts; send one part, the image, in "
                "a field named 'file'"
            )
        return data


class _UploadFormParser(FormDataParser):
    """werkzeug's form parser, raising :class:`FormLimitExceeded` with the limit that was hit
    (werkzeug raises the same bare 413 for too many parts, a long text field and a large body)."""

    def _parse_multipart(
        self, stream: IO[bytes], mimetype: str, content_length: int | None, options: Any
    ) -> Any:
        max_parts = self.max_form_parts or MAX_FORM_PARTS
        counter = _PartCounter(stream, options.get("boundary", "").encode("latin-1"), max_parts)
        self.max_form_parts = max_parts + 1  # the counter, reading ahead, stops the form first
        try:
            parsed = super()._parse_multipart(counter, mimetype, content_length, options)  # type: ignore[arg-type]
        except FormLimitExceeded:
            raise
        except UnicodeDecodeError:  # werkzeug decodes each part's headers as UTF-8
            raise BadRequest(
                "a part's headers are not UTF-8 (often a file name in another encoding); "
                "rename the file with UTF-8 or ASCII characters and send it again"
            ) from None
        except ValueError:  # werkzeug's parser, for a form it cannot read
            raise BadRequest(
                "the multipart/form-data body is malformed or truncated; send the image in a "
                "field named 'file' (curl -F file=@photo.jpg …)"
            ) from None
        except RequestEntityTooLarge:
            if counter.body_too_large:  # the body ran over max_content_length
                raise
            raise FormLimitExceeded(
                f"a text field of the form is larger than the {self.max_form_memory_size:,} "
                "bytes allowed; send the image as a file part (with a filename) named 'file'"
            ) from None
        _, form, files = parsed
        if None in form or None in files:  # Content-Disposition without name=
            raise BadRequest(
                "a part of the form has no name; send the image as a part named 'file'"
            )
        return parsed


class UploadRequest(Request):
    """Flask's request, with a form parser that says which of the form's limits was hit."""

    form_data_parser_class = _UploadFormParser
