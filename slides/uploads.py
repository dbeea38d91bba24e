"""Receiving slide uploads safely: file names with a directory part are refused, not trimmed.

Django's multipart parser quietly cuts a sent file name down to its last component
("../../etc/x.tiff" becomes "x.tiff"). That keeps the file inside our folder, but it hides from the
sender that the name was not what it claimed to be. For slides we refuse such names instead, with
the name in the message, before a byte of the file is written anywhere.
"""

from __future__ import annotations

import html

from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles, MultiPartParser, get_encoding

# Archives: a slide is one file (or a DICOM series uploaded file by file), never an archive that
# the server would have to unpack.
ARCHIVE_SUFFIXES = {".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".zst"}


class UnsafeFileName(MultiPartParserError):
    """A sent file name with a directory part, '..', or control characters."""


def unsafe_name_reason(name: str) -> str | None:
    """Why a client's file name is not a plain file name, or None if it is one."""
    name = html.unescape(name)
    if "/" in name or "\\" in name:
        return "has a directory part"
    if name.strip() in {"", ".", ".."}:
        return "is empty or a directory name"
    if any(not ch.isprintable() for ch in name):
        return "contains control characters"
    return None


class _StrictDjangoParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name: str) -> str | None:
        reason = unsafe_name_reason(file_name)
        if reason:
            raise UnsafeFileName(f"file name {file_name!r} {reason}; send the plain file name")
        return super().sanitize_file_name(file_name)


class SafeMultiPartParser(MultiPartParser):
    """DRF's multipart parser, refusing (400) file names that try to leave the upload folder."""

    def parse(self, stream, media_type=None, parser_context=None) -> DataAndFiles:
        parser_context = parser_context or {}
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        try:
            parser = _StrictDjangoParser(
                meta, stream, request.upload_handlers, get_encoding(parser_context)
            )
            data, files = parser.parse()
        except UnsafeFileName as exc:
            raise ParseError({"file": [str(exc)]}) from exc
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error - {exc}") from exc
        return DataAndFiles(data, files)
