"""multipart/form-data parsed in memory.

Starlette's form parser spools file parts over 1 MB to temporary files; uploads here must never
touch the disk, and the body is already bounded (see :mod:`refad.serve.limits`), so the parts
are collected into bytes with python-multipart's low-level parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from refad.serve.backend import RequestError


class TooManyParts(RequestError):
    """More parts than ``parse_form`` was allowed to collect (the caller says which limit)."""


@dataclass
class Part:
    """One form field: ``filename`` is set (possibly empty) for file fields."""

    name: str
    filename: str | None
    data: bytes


@dataclass
class _State:
    parts: list[Part] = field(default_factory=list)
    headers: dict[str, bytes] = field(default_factory=dict)
    field_name: bytearray = field(default_factory=bytearray)
    field_value: bytearray = field(default_factory=bytearray)
    data: list[bytes] = field(default_factory=list)
    ended: bool = False


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data content type; RequestError for anything else."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise RequestError("expected a multipart/form-data body (fields: image, category, ...)")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RequestError("multipart/form-data content type has no valid boundary")
    return boundary


def _printable(raw: bytes, limit: int = 100) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:limit]


def parse_form(body: bytes, content_type: str | None, max_parts: int) -> list[Part]:
    """Split a multipart body into parts (at most ``max_parts``); RequestError if malformed."""
    boundary = boundary_of(content_type)
    st = _State()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st.field_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st.field_value.extend(data[start:end])

    def on_header_end() -> None:
        st.headers[bytes(st.field_name).decode("latin-1").lower()] = bytes(st.field_value)
        st.field_name.clear()
        st.field_value.clear()

    def on_part_begin() -> None:
        st.headers.clear()
        st.data.clear()
        if len(st.parts) >= max_parts:
            raise TooManyParts(f"too many form fields (at most {max_parts})")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        st.data.append(bytes(data[start:end]))

    def on_part_end() -> None:
        disposition, params = parse_options_header(st.headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise RequestError("a multipart part has no Content-Disposition: form-data name")
        filename = params.get(b"filename")
        st.parts.append(Part(
            name=_printable(params[b"name"]),
            filename=None if filename is None else _printable(filename.rsplit(b"/", 1)[-1]),
            data=b"".join(st.data),
        ))

    def on_end() -> None:
        st.ended = True

    callbacks = {
        "on_end": on_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_begin": on_part_begin,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except ParseError as exc:
        raise RequestError(f"malformed multipart body ({' '.join(str(exc).split())[:120]})") \
            from None
    if not st.ended:
        raise RequestError("multipart body ends before its closing boundary")
    if not st.parts:
        raise RequestError("multipart body holds no fields")
    return st.parts
