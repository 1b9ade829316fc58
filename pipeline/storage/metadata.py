"""The request embedded in an image's bytes, and read back (`imagebatch show`).

PNG: an iTXt chunk inserted right after IHDR; JPEG: COM segment(s) right after SOI.
Both are spliced into the encoded bytes, never re-encoded, so pixels stay exactly as served.
WebP and AVIF (exported files): an XMP packet (`xmp_packet`) that the encoder writes, since
splicing into their containers would mean rewriting offsets; read back from the WebP `XMP `
chunk or the AVIF `mime` item of type application/rdf+xml.
The text is the request body exactly as sent (canonical JSON): no key, no URL.

Beside the request, every image carries the standard AI marker: XMP
`Iptc4xmpExt:DigitalSourceType` = trainedAlgorithmicMedia (IPTC's code for model output),
the one field platforms and the EU AI Act's marking look for. PNG: an iTXt chunk
`XML:com.adobe.xmp`; JPEG: an APP1 XMP segment; WebP and AVIF: the same XMP packet that
holds the request. `source_type` reads it back.
"""

from __future__ import annotations

import html
import io
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from ..errors import ImagebatchError

#: The PNG text keyword / JPEG comment prefix that marks our metadata.
KEYWORD = "imagebatch-request"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_PREFIX = (KEYWORD + ":").encode()
_JPEG_MAX_PAYLOAD = 65533 - len(_JPEG_PREFIX)  # a COM segment holds at most 65533 bytes
#: Largest embedded request read back. A real body (prompts of at most 10,000 characters) is
#: a few tens of KB; the bound keeps a crafted compressed chunk from inflating to gigabytes.
MAX_REQUEST_BYTES = 1 << 20
#: Deepest nesting of arrays/objects accepted in an embedded request. Real bodies are flat;
#: the bound keeps parsing and printing a crafted one clear of Python's recursion limit.
MAX_REQUEST_DEPTH = 32


#: The XMP namespace of the request attribute.
XMP_NAMESPACE = "https://imagebatch.invalid/ns/xmp/1.0/"
#: IPTC's Extension schema, which holds DigitalSourceType.
IPTC_EXT_NAMESPACE = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
#: IPTC's digital source type for media made by a trained model: the AI marker.
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
_JPEG_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
# The source type as an attribute (what we write) or an element, with or without rdf:resource.
_XMP_SOURCE_TYPE = re.compile(
    rb'Iptc4xmpExt:DigitalSourceType(?:="([^"]*)"|\s*>([^<]*)<|\s+rdf:resource="([^"]*)")')
#: Largest XMP packet read back: the request, escaped as an XML attribute, grows by at most 6x.
MAX_XMP_BYTES = 6 * MAX_REQUEST_BYTES + 4096
_XMP_REQUEST = re.compile(rb'imagebatch:request="([^"]*)"')
# Characters an XML attribute cannot hold as themselves (line breaks would be normalised).
_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                "\r": "&#13;", "\t": "&#9;"}
_XML_SPECIAL = re.compile(r'[&<>"\n\r\t]')
_ISOBMFF_MAX_BOXES = 10_000  # boxes walked in an AVIF header; real files have a few dozen


class MetadataError(ImagebatchError, ValueError):
    """The bytes are not an image we can embed into or read from (still a ValueError)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def embed(data: bytes, body: str | None) -> bytes:
    """Return `data` (PNG, JPEG or WebP) with the AI marker (XMP DigitalSourceType) and,
    unless None, the request `body` embedded; raises MetadataError."""
    text = b"" if body is None else body.encode("utf-8")
    if data.startswith(PNG_SIGNATURE):
        # IHDR is always the first chunk: 8 signature + 4 length + 4 type + 13 data + 4 crc.
        end_ihdr = 8 + 8 + 13 + 4
        if data[12:16] != b"IHDR" or len(data) < end_ihdr:
            raise MetadataError("PNG without IHDR first")
        # iTXt: keyword NUL, compression flag 0, method 0, language NUL, translated NUL, UTF-8.
        chunk = b"" if body is None else \
            _png_chunk(b"iTXt", KEYWORD.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text)
        # The marker in its own XMP chunk: the request chunk stays as older readers know it.
        marker = _png_chunk(b"iTXt", _PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp_packet(None))
        return data[:end_ihdr] + chunk + marker + data[end_ihdr:]
    if data.startswith(b"\xff\xd8"):
        xmp = _JPEG_XMP_PREFIX + xmp_packet(None)
        segments = [b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp]
        for i in range(0, max(len(text), 1) if body is not None else 0, _JPEG_MAX_PAYLOAD):
            payload = _JPEG_PREFIX + text[i : i + _JPEG_MAX_PAYLOAD]
            segments.append(b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload)
        return data[:2] + b"".join(segments) + data[2:]
    if _is_webp(data):
        return _embed_webp(data, body)
    raise MetadataError("not a PNG, JPEG or WebP")


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")


def _embed_webp(data: bytes, body: str | None) -> bytes:
    """`data` (a WebP) with an `XMP ` chunk holding the request, its pixels untouched.

    A simple WebP (one VP8 or VP8L chunk) becomes an extended one: a VP8X chunk first, with
    the XMP flag and the canvas size, then its chunks, then the XMP chunk (the order the
    container's specification asks). An extended one gets the flag set and the chunk added.
    """
    from PIL import Image

    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end:
        kind = data[pos:pos + 4]
        length = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        payload = data[pos + 8:pos + 8 + length]
        if len(payload) < length:
            raise MetadataError("WebP chunk is cut short (a truncated file)")
        if kind != b"XMP ":  # an older request of ours is replaced, never doubled
            chunks.append((kind, payload))
        pos += 8 + length + (length % 2)
    if not chunks:
        raise MetadataError("WebP without chunks")
    xmp_flag, alpha_flag = 0x04, 0x10
    if chunks[0][0] == b"VP8X":
        head = bytearray(chunks[0][1])
        head[0] |= xmp_flag
        chunks[0] = (b"VP8X", bytes(head))
    else:
        with Image.open(io.BytesIO(data), formats=("WEBP",)) as img:
            w, h = img.size
            alpha = "A" in img.mode
        flags = xmp_flag | (alpha_flag if alpha else 0)
        vp8x = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + \
            (h - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", vp8x))
    chunks.append((b"XMP ", xmp_packet(body)))
    riff = b"WEBP" + b"".join(_riff_chunk(k, p) for k, p in chunks)
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


def xmp_packet(body: str | None) -> bytes:
    """An XMP packet carrying the AI marker and, unless None, the request `body`: what an
    encoder writes (WebP, AVIF), or the marker alone (PNG, JPEG keep the request apart)."""
    request = ""
    if body is not None:
        value = _XML_SPECIAL.sub(lambda m: _XML_ESCAPES[m.group()], body)
        request = f' xmlns:imagebatch="{XMP_NAMESPACE}" imagebatch:request="{value}"'
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT_NAMESPACE}" '
            f'Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"{request}/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>').encode()


def _xmp_text(packet: bytes) -> str | None:
    """The request in an XMP packet we wrote, or None when it has none."""
    m = _XMP_REQUEST.search(packet)
    if m is None:
        return None
    try:
        raw = m.group(1).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"embedded request is not UTF-8 text ({exc.reason})") from None
    return html.unescape(raw)  # the XML character references we write are HTML's too


def _webp_xmp(data: bytes) -> bytes | None:
    """A WebP's `XMP ` chunk (RIFF: fourcc, little-endian size, even padding), or None."""
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if kind == b"XMP ":
            if length > MAX_XMP_BYTES:
                raise MetadataError(f"embedded XMP is larger than {MAX_XMP_BYTES} bytes")
            chunk = data[pos + 8 : pos + 8 + length]
            if len(chunk) < length:
                raise MetadataError("the XMP chunk is cut short (a truncated file)")
            return chunk
        pos += 8 + length + (length & 1)
    return None


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISOBMFF boxes in data[start:end]."""
    out = []
    pos = start
    while pos + 8 <= end:
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        head = 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                raise MetadataError("AVIF box header is cut short")
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            head = 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - pos
        if size < head or pos + size > end:
            raise MetadataError("AVIF box runs past the end of the file (a truncated file?)")
        out.append((kind, pos + head, pos + size))
        if len(out) > _ISOBMFF_MAX_BOXES:
            raise MetadataError("AVIF header has too many boxes")
        pos += size
    return out


class _Reader:
    """Big-endian fields read from data[pos:end], refusing to read past `end`."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def uint(self, size: int) -> int:
        if size == 0:
            return 0
        if self.pos + size > self.end:
            raise MetadataError("AVIF header field is cut short")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value

    def cstring(self) -> bytes:
        stop = self.data.find(b"\x00", self.pos, self.end)
        if stop < 0:
            raise MetadataError("AVIF item name is not terminated")
        text = self.data[self.pos : stop]
        self.pos = stop + 1
        return text


def _xmp_item(data: bytes, iinf: tuple[int, int]) -> int | None:
    """The item id of the XMP item (`mime`, application/rdf+xml) listed in an iinf box."""
    r = _Reader(data, *iinf)
    version = r.uint(1)
    r.uint(3)
    r.uint(2 if version == 0 else 4)  # entry count: the infe boxes say it again
    for kind, start, end in _boxes(data, r.pos, iinf[1]):
        if kind != b"infe":
            continue
        e = _Reader(data, start, end)
        v = e.uint(1)
        e.uint(3)
        if v < 2:
            continue  # versions 0 and 1 carry no item type
        item = e.uint(2 if v == 2 else 4)
        e.uint(2)  # protection index
        item_type = data[e.pos : e.pos + 4]
        e.pos += 4
        if item_type == b"mime":
            e.cstring()  # name
            if e.cstring() == b"application/rdf+xml":
                return item
    return None


def _item_bytes(data: bytes, iloc: tuple[int, int], item: int,
                idat: tuple[int, int] | None) -> bytes | None:
    """The bytes of `item` as an iloc box places them (in the file, or in idat)."""
    r = _Reader(data, *iloc)
    version = r.uint(1)
    r.uint(3)
    sizes = r.uint(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = r.uint(1)
    base_size, index_size = sizes >> 4, (sizes & 15 if version in (1, 2) else 0)
    count = r.uint(2 if version < 2 else 4)
    for _ in range(count):
        item_id = r.uint(2 if version < 2 else 4)
        method = r.uint(2) & 15 if version in (1, 2) else 0
        r.uint(2)  # data reference index
        base = r.uint(base_size)
        extents = r.uint(2)
        parts = []
        total = 0
        for _ in range(extents):
            r.uint(index_size)
            offset, length = r.uint(offset_size), r.uint(length_size)
            total += length
            if item_id != item:
                continue
            if total > MAX_XMP_BYTES:
                raise MetadataError(f"embedded XMP is larger than {MAX_XMP_BYTES} bytes")
            if method == 0:
                start = base + offset
                stop = len(data)
            elif method == 1 and idat is not None:
                start = idat[0] + base + offset
                stop = idat[1]
            else:
                raise MetadataError("AVIF XMP item is stored in a way this reader does not "
                                    "follow")
            if length == 0 or start + length > stop:
                raise MetadataError("AVIF XMP item runs past the end of the file "
                                    "(a truncated file?)")
            parts.append(data[start : start + length])
        if item_id == item:
            return b"".join(parts)
    return None


def _avif_xmp(data: bytes) -> bytes | None:
    """An AVIF's XMP item: meta > iinf names it, iloc says where it is; or None."""
    meta = next(((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"meta"), None)
    if meta is None:
        return None
    children = {kind: (s, e) for kind, s, e in _boxes(data, meta[0] + 4, meta[1])}
    if b"iinf" not in children or b"iloc" not in children:
        return None
    item = _xmp_item(data, children[b"iinf"])
    if item is None:
        return None
    return _item_bytes(data, children[b"iloc"], item, children.get(b"idat"))


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _is_avif(data: bytes) -> bool:
    if data[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack(">I", data[:4])
    brands = data[8 : min(size, 256)]
    return any(brands[i : i + 4] in (b"avif", b"avis") for i in range(0, len(brands) - 3, 4))


def _png_text(data: bytes) -> str | None:
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"iTXt":
            keyword, _, rest = chunk.partition(b"\x00")
            if keyword == KEYWORD.encode("latin-1") and len(rest) >= 2:
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _translated, _, text = rest.partition(b"\x00")
                return _decode(_inflate(text) if compressed else text)
        elif kind == b"tEXt":
            keyword, _, text = chunk.partition(b"\x00")
            if keyword == KEYWORD.encode("latin-1"):
                return _bounded(text).decode("latin-1")
        if kind in (b"IDAT", b"IEND"):
            break  # text we write always precedes the image data
        pos += 12 + length
    return None


def _jpeg_text(data: bytes) -> str | None:
    pos, parts = 2, []
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more header segments
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xFE:
            payload = data[pos + 4 : pos + 2 + length]
            if payload.startswith(_JPEG_PREFIX):
                parts.append(payload[len(_JPEG_PREFIX) :])
        pos += 2 + length
    return _decode(b"".join(parts)) if parts else None


def _bounded(text: bytes) -> bytes:
    if len(text) > MAX_REQUEST_BYTES:
        raise MetadataError(f"embedded request is larger than {MAX_REQUEST_BYTES} bytes")
    return text


def _inflate(data: bytes) -> bytes:
    """zlib-inflate at most MAX_REQUEST_BYTES (+1 to tell "too large" from "exactly")."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error as exc:
        raise MetadataError(f"embedded request is not valid compressed data ({exc})") from None
    _bounded(text)
    if not inflater.eof:
        raise MetadataError("embedded request is truncated compressed data")
    return text


def _decode(text: bytes) -> str:
    try:
        return _bounded(text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"embedded request is not UTF-8 text ({exc.reason})") from None


def extract(data: bytes) -> str | None:
    """The embedded request body text, or None when there is none; MetadataError if malformed."""
    if data.startswith(PNG_SIGNATURE):
        return _png_text(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_text(data)
    if _is_webp(data) or _is_avif(data):
        packet = _webp_xmp(data) if _is_webp(data) else _avif_xmp(data)
        return None if packet is None else _xmp_text(packet)
    raise MetadataError("not a PNG, JPEG, WebP or AVIF image")


def _png_xmp(data: bytes) -> bytes | None:
    """A PNG's XMP packet (iTXt `XML:com.adobe.xmp`, before the image data), or None."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"iTXt" and data[pos + 8 : pos + 8 + len(_PNG_XMP_KEYWORD) + 1] == \
                _PNG_XMP_KEYWORD + b"\x00":
            if length > MAX_XMP_BYTES:
                raise MetadataError(f"embedded XMP is larger than {MAX_XMP_BYTES} bytes")
            rest = data[pos + 8 + len(_PNG_XMP_KEYWORD) + 1 : pos + 8 + length]
            if len(rest) < 2 or rest[0]:
                return None  # compressed XMP: not ours, and not read here
            _lang, _, rest = rest[2:].partition(b"\x00")
            return rest.partition(b"\x00")[2]
        pos += 12 + length
    return None


def _jpeg_xmp(data: bytes) -> bytes | None:
    """A JPEG's XMP packet (an APP1 segment with Adobe's namespace header), or None."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        payload = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and payload.startswith(_JPEG_XMP_PREFIX):
            return payload[len(_JPEG_XMP_PREFIX) :]
        pos += 2 + length
    return None


def format_of(data: bytes) -> str:
    """The format of an image's bytes: png, jpeg, webp or avif; MetadataError otherwise."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if _is_webp(data):
        return "webp"
    if _is_avif(data):
        return "avif"
    raise MetadataError("not a PNG, JPEG, WebP or AVIF image")


def xmp(data: bytes) -> bytes | None:
    """The XMP packet of an image (PNG, JPEG, WebP or AVIF), or None; MetadataError if the
    bytes are no such image or malformed."""
    if data.startswith(PNG_SIGNATURE):
        return _png_xmp(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_xmp(data)
    if _is_webp(data):
        return _webp_xmp(data)
    if _is_avif(data):
        return _avif_xmp(data)
    raise MetadataError("not a PNG, JPEG, WebP or AVIF image")


def source_type(data: bytes) -> str | None:
    """The IPTC digital source type an image's XMP declares (the AI marker), or None."""
    packet = xmp(data)
    if packet is None:
        return None
    m = _XMP_SOURCE_TYPE.search(packet)
    if m is None:
        return None
    value = next(g for g in m.groups() if g is not None)
    return html.unescape(value.decode("utf-8", "replace")).strip()


#: Beside an image kept byte for byte (signed by its provider: embedding would break the
#: signature), its request is written to `<image>.request.json`.
SIDECAR_SUFFIX = ".request.json"


def sidecar(path: Path) -> Path:
    """Where the request of an image kept byte for byte is written: `<image>.request.json`."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_request(path: Path) -> dict[str, Any]:
    """The request embedded in the image at `path`, or else in its sidecar
    (`<image>.request.json`); raises MetadataError when there is none."""
    data = Path(path).read_bytes()
    try:
        text = extract(data)
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from None
    if text is None:
        try:
            raw = sidecar(path).read_bytes()
        except OSError:
            raise MetadataError(f"{path}: carries no imagebatch request") from None
        text = _decode(raw)
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MetadataError(f"{path}: embedded request is nested too deeply") from None
    except ValueError as exc:
        raise MetadataError(f"{path}: embedded request is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MetadataError(f"{path}: embedded request is not a JSON object")
    problem = _check_value(body)
    if problem:
        raise MetadataError(f"{path}: embedded request {problem}")
    return body


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: a body holding them could not be sent again as printed.
    raise ValueError(f"{name} is not a JSON value")


def _check_value(body: Any) -> str | None:
    """Why `body` could not be printed back as UTF-8 JSON, or None. Walks without recursion."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                # json.loads lets "\\ud800" through; printing it as UTF-8 would fail
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(value, (dict, list)):
            if depth > MAX_REQUEST_DEPTH:
                return f"is nested too deeply (more than {MAX_REQUEST_DEPTH} levels)"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None
