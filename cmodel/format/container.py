"""The ``.cmz`` container: preamble, header, aligned segments (spec §2–§4, §7).

:class:`CmzFile` reads (memory-mapped, lazy) and :class:`ContainerWriter`
writes.  Both sides share the header code in :mod:`cmodel.format.header` and the
encodings in :mod:`cmodel.format.encodings`.
"""

from __future__ import annotations

import copy
import mmap
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass

from . import constants as C
from .encodings import REGISTRY
from ..errors import CmzError
from .header import Header, Segment, TensorRecord, pack_header, tensor_record_dict, unpack_header, validate_header


def align_up(n: int) -> int:
    return -(-n // C.ALIGNMENT) * C.ALIGNMENT


def crc32(buf) -> int:
    return zlib.crc32(buf) & 0xFFFFFFFF


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_length: int
    header_crc32: int


def pack_preamble(header: bytes, version=C.FORMAT_VERSION) -> bytes:
    return struct.pack(C.PREAMBLE_FORMAT, C.MAGIC, version[0], version[1], 0, len(header), crc32(header), 0)


def parse_preamble(buf: bytes, file_size: int) -> Preamble:
    """Checks ``preamble`` … ``header_length`` of spec §7."""
    if len(buf) < C.PREAMBLE_SIZE:
        raise CmzError("preamble", f"EOF: reading preamble, expected {C.PREAMBLE_SIZE} bytes, found {len(buf)}")
    magic, major, minor, flags, hlen, hcrc, reserved = struct.unpack(C.PREAMBLE_FORMAT, buf[: C.PREAMBLE_SIZE])
    if magic != C.MAGIC:
        raise CmzError("magic", f"expected magic {C.MAGIC!r}; found {magic!r} (not a .cmz file, or mangled in text mode)")
    if (major, minor) not in C.READABLE_VERSIONS:
        ok = ", ".join(f"{a}.{b}" for a, b in C.READABLE_VERSIONS)
        raise CmzError("version", f"expected format version {ok}; found {major}.{minor}")
    if flags != 0:
        raise CmzError("flags", f"expected preamble flags 0; found {flags:#x}")
    if reserved != 0:
        raise CmzError("reserved", f"expected reserved preamble field 0; found {reserved:#x}")
    if hlen > C.MAX_HEADER_BYTES:
        raise CmzError("header_length", f"expected header length ≤ {C.MAX_HEADER_BYTES} (MAX_HEADER_BYTES); found {hlen}")
    if C.PREAMBLE_SIZE + hlen > file_size:
        raise CmzError("header_length", f"EOF: reading header, expected {hlen} bytes, found {file_size - C.PREAMBLE_SIZE}")
    return Preamble(major, minor, hlen, hcrc)


class CmzFile:
    """A ``.cmz`` file opened for reading (use :func:`cmodel.open`).

    Opening checks everything up to and including the segment layout, the
    zero padding and the file size (spec §7); segment CRCs are checked the
    first time a segment is used, or all at once by :meth:`verify`.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._mm = None
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pre = parse_preamble(f.read(C.PREAMBLE_SIZE), size)
            raw = f.read(pre.header_length)
            if crc32(raw) != pre.header_crc32:
                raise CmzError("header_crc", f"expected header CRC-32 {pre.header_crc32:#010x}; found {crc32(raw):#010x}")
            self.data_start = align_up(C.PREAMBLE_SIZE + pre.header_length)
            pad = f.read(self.data_start - C.PREAMBLE_SIZE - pre.header_length)
            if pad.strip(b"\0"):
                raise CmzError("header_padding", "expected zero bytes between the header and the data section; found non-zero")
            header = validate_header(unpack_header(raw))
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = size
        self.version = (pre.major, pre.minor)
        self.header_length = pre.header_length
        self._header: Header = header
        self._records = {r.name: r for r in header.tensors}
        self._verified: set[tuple[str, str]] = set()
        try:
            for rec in header.tensors:
                REGISTRY[rec.encoding].check_record(rec)
            self.data_length = self._check_layout()
        except BaseException:
            self.close()
            raise

    # -- layout ---------------------------------------------------------

    def _check_layout(self) -> int:
        """Segments tile the data section in offset order (spec §4)."""
        segs = sorted(
            ((s.offset, s.length, rec.name, role) for rec in self._header.tensors for role, s in rec.segments.items()),
        )
        avail = self.size - self.data_start
        end = 0
        for off, length, name, role in segs:
            what = f"tensor {name!r} segment {role!r}"
            if off % C.ALIGNMENT:
                raise CmzError("segment_layout", f"{what}: expected an offset that is a multiple of {C.ALIGNMENT}; found {off}")
            if off < end:
                raise CmzError("segment_layout", f"{what}: expected segments not to overlap; found offset {off} inside the previous segment ending at {end}")
            if off != align_up(end):
                raise CmzError("segment_layout", f"{what}: expected offset {align_up(end)} (next aligned byte after the previous segment); found {off} (a hole)")
            if off + length > avail:
                raise CmzError("segment_layout", f"EOF: {what} ends at data byte {off + length}, expected within the {avail} bytes of the data section")
            if off > end and self._mm[self.data_start + end : self.data_start + off].strip(b"\0"):
                raise CmzError("segment_padding", f"{what}: expected zero padding before offset {off}; found non-zero bytes")
            end = off + length
        if avail != end:
            raise CmzError("file_size", f"expected the file to end with the last segment at {self.data_start + end} bytes; found {self.size} bytes ({avail - end} trailing)")
        return end

    # -- segment access -------------------------------------------------

    def segment(self, rec: TensorRecord, role: str) -> memoryview:
        """The CRC-verified bytes of one segment (a view into the map)."""
        s = rec.segments[role]
        a = self.data_start + s.offset
        view = memoryview(self._mm)[a : a + s.length]
        if (rec.name, role) not in self._verified:
            found = crc32(view)
            if found != s.crc32:
                view.release()
                raise CmzError("segment_crc", f"tensor {rec.name!r} segment {role!r}: expected CRC-32 {s.crc32:#010x}; found {found:#010x}")
            self._verified.add((rec.name, role))
        return view

    # -- public API -----------------------------------------------------

    @property
    def metadata(self) -> dict[str, str]:
        """The file's metadata map (a copy)."""
        return dict(self._header.metadata)

    @property
    def producer(self) -> dict[str, str] | None:
        return None if self._header.producer is None else dict(self._header.producer)

    @property
    def graph(self) -> dict | None:
        """The header's ``graph`` map as parsed (spec §10), or None.

        Only its being a map is checked on open; :mod:`cmodel.runtime.graph`
        validates the content (check ``graph``).  A deep copy, so callers
        cannot change the file's view of it.
        """
        return None if self._header.graph is None else copy.deepcopy(self._header.graph)

    def tensor_names(self) -> list[str]:
        """Tensor names in file order."""
        return [r.name for r in self._header.tensors]

    def record(self, name: str) -> TensorRecord:
        """The validated record of tensor ``name``.

        Raises:
            KeyError: no tensor of that name.
        """
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def read(self, name: str):
        """Decode tensor ``name`` into a new numpy array.

        bfloat16 tensors are returned as float32 (exact).

        Raises:
            KeyError: no tensor of that name.
            CmzError: a segment CRC or the tensor's data is bad.
        """
        self._require_open()
        rec = self.record(name)
        enc = REGISTRY[rec.encoding]
        enc.check_data(rec, self.segment)
        return enc.decode(rec, self.segment)

    def read_compressed(self, name: str):
        """The packed form of a ``codebook`` or ``sparse`` tensor, as kernels
        use it (:class:`cmodel.format.encodings.Compressed`): float32 codebook and
        scales, pointers, and the entry stream, Huffman streams decoded once
        into packed entries.  Every data check runs first.

        Raises:
            KeyError: no tensor of that name.
            CmzError: the tensor is ``raw``, or its data is bad.
        """
        self._require_open()
        rec = self.record(name)
        if rec.encoding == "raw":
            raise CmzError("encoding", f"tensor {name!r}: expected a codebook or sparse tensor; found encoding 'raw' (use read())")
        return REGISTRY[rec.encoding].load(rec, self.segment)

    def verify(self) -> None:
        """Run every remaining check: all segment CRCs, then all data checks.

        Raises:
            CmzError: the first failed check.
        """
        self._require_open()
        for rec in self._header.tensors:
            for role in rec.segments:
                self.segment(rec, role).release()
        for rec in self._header.tensors:
            REGISTRY[rec.encoding].check_data(rec, self.segment)

    def _require_open(self):
        if self._mm is None:
            raise ValueError(f"{self.path} is closed")

    def close(self) -> None:
        if self._mm is not None:
            mm, self._mm = self._mm, None
            try:
                mm.close()
            except BufferError:
                pass  # arrays still view the map; it is unmapped when they go

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# --- writer -----------------------------------------------------------------


def _utf8(what: str, s) -> bytes:
    if type(s) is not str:
        raise CmzError("input", f"{what}: expected str; found {type(s).__name__} {s!r}")
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise CmzError("input", f"{what}: expected a string encodable as UTF-8; found {s!r}") from None


def _check_input_name(name) -> None:
    n = len(_utf8("tensor name", name))
    if not 0 < n <= C.MAX_NAME_BYTES or "\x00" in name:
        raise CmzError("input", f"tensor name {name[:80]!r}: expected 1..{C.MAX_NAME_BYTES} UTF-8 bytes without NUL; found {n} bytes")


def _check_input_map(what: str, m) -> None:
    if len(m) > C.MAX_METADATA_ENTRIES:
        raise CmzError("input", f"{what}: expected at most {C.MAX_METADATA_ENTRIES} entries (MAX_METADATA_ENTRIES); found {len(m)}")
    for k, v in m.items():
        _utf8(f"{what} key", k)
        _utf8(f"{what}[{k!r}]", v)


class WriterStateError(RuntimeError):
    """A :class:`ContainerWriter` method was called out of order."""


class ContainerWriter:
    """Writes one ``.cmz`` file as an explicit state machine.

    ``collect`` (``add_tensor``) → ``preamble`` → ``header`` → ``segments`` →
    ``committed``.  Each step refuses to run out of order.  The bytes go to a
    temporary file in the target's directory, which ``commit`` fsyncs and
    renames over the target, so the target path never holds a partial file.
    ``abort`` (or leaving a ``with`` block by an exception) removes it.
    ``graph`` is the header form of a graph (spec §10), written as the
    header's last key; the writer checks only that it is a map.
    """

    def __init__(self, path, metadata: dict[str, str] | None = None, producer: dict[str, str] | None = None, graph: dict | None = None):
        for what, m in (("metadata", metadata or {}), ("producer", producer or {})):
            _check_input_map(what, m)
        if graph is not None and not isinstance(graph, dict):
            raise CmzError("input", f"graph: expected a map (the header form, spec §10); found {type(graph).__name__}")
        self.path = os.fspath(path)
        self.state = "collect"
        self._metadata = dict(metadata or {})
        self._producer = producer
        self._graph = graph
        self._records: list[dict] = []
        self._names: set[str] = set()
        self._payloads: list[tuple[int, memoryview]] = []
        self._end = 0
        self._fd = None
        self._tmp = None
        self._header = b""

    def _step(self, expected: str, new: str) -> None:
        if self.state != expected:
            raise WriterStateError(f"cannot {new!r} in state {self.state!r}; expected state {expected!r}")
        self.state = new

    def add_tensor(self, name: str, shape, dtype: str, encoding: str, params: dict, segments: dict) -> None:
        """Queue one tensor record and its segment payloads (bytes-like),
        given in the encoding's role order.

        Raises:
            WriterStateError: called after ``write_preamble``.
            CmzError: duplicate name.
        """
        if self.state != "collect":
            raise WriterStateError(f"cannot 'add_tensor' in state {self.state!r}; expected state 'collect'")
        _check_input_name(name)
        if name in self._names:
            raise CmzError("input", f"tensor {name!r}: expected unique names; found it twice")
        self._names.add(name)
        segs = {}
        for role, payload in segments.items():
            mv = memoryview(payload).cast("B")
            off = align_up(self._end)
            segs[role] = Segment(off, mv.nbytes, crc32(mv))
            self._payloads.append((off, mv))
            self._end = off + mv.nbytes
        self._records.append(tensor_record_dict(name, shape, dtype, encoding, params, segs))

    def write_preamble(self) -> None:
        """Freeze the header, validate it as a reader would, open the
        temporary file and write the preamble."""
        self._step("collect", "preamble")
        try:
            self._header = pack_header(self._metadata, self._producer, self._records, self._graph)
        except (TypeError, ValueError, OverflowError) as e:  # a graph value msgpack cannot store
            self.abort()
            raise CmzError("input", f"graph: expected only maps, arrays, str, int, float, bool and nil; found {type(e).__name__}: {e}") from None
        if len(self._header) > C.MAX_HEADER_BYTES:
            self.abort()
            raise CmzError("header_length", f"expected header length ≤ {C.MAX_HEADER_BYTES} (MAX_HEADER_BYTES); found {len(self._header)}")
        try:
            hdr = validate_header(unpack_header(self._header))
            for rec in hdr.tensors:
                REGISTRY[rec.encoding].check_record(rec)
        except CmzError:
            self.abort()
            raise
        directory = os.path.dirname(os.path.abspath(self.path))
        self._fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp", dir=directory)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(self._fd, 0o666 & ~umask)
        self._write(pack_preamble(self._header))

    @property
    def header_length(self) -> int:
        """Bytes of the header (known once the preamble is written)."""
        return len(self._header)

    def write_header(self) -> None:
        self._step("preamble", "header")
        self._write(self._header)
        end = C.PREAMBLE_SIZE + len(self._header)
        self._write(bytes(align_up(end) - end))

    def write_segments(self) -> None:
        self._step("header", "segments")
        pos = 0
        for off, mv in self._payloads:
            self._write(bytes(off - pos))
            self._write(mv)
            pos = off + mv.nbytes

    def commit(self) -> None:
        """fsync the temporary file and rename it over the target."""
        self._step("segments", "committed")
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self._tmp, self.path)
            self._tmp = None
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            self.abort()
            raise
        self._payloads.clear()

    def write(self) -> None:
        """Run all remaining steps in order."""
        try:
            self.write_preamble()
            self.write_header()
            self.write_segments()
            self.commit()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the temporary file; the target is left as it was."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
        if self.state != "committed":
            self.state = "aborted"

    def _write(self, buf) -> None:
        mv = memoryview(buf)
        while mv.nbytes:
            n = os.write(self._fd, mv)
            mv = mv[n:]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self.state != "committed":
            self.abort()
