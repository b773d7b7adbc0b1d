"""TensorBoard event files of the metrics lines (`train.report_to: tensorboard`), with no dependency.

An event file is a TFRecord stream. Each record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)     (little-endian)

and each record's data one `Event` protocol buffer (tensorflow/core/util/event.proto). The first
event carries file_version "brain.Event:2"; then one event per metrics line: its wall time, its
`step` and a Summary holding one `simple_value` per number of the line, tagged with the key as in
metrics.jsonl (`loss`, `eval_loss`, `reward`, `track_kl`...). Those few protobuf fields are all
TensorBoard needs for scalars, so they are encoded by hand here (and decoded by `read_scalars`).

While a stage trains, its Trainer mirrors each new metrics line into OUT.tensorboard/ (next to the
checkpoint folder OUT.checkpoints/), so `tensorboard --logdir runs/` shows the run live; a resumed
run rewrites that file from the lines its checkpoint kept. `write_artifact_events(out, lines)`
writes the finished artifact's OUT/tensorboard/ from the final lines (exactly metrics.jsonl) and
removes the live folder.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
import time
from pathlib import Path

EVENTS_GLOB = "events.out.tfevents.*"
FILE_VERSION = b"brain.Event:2"


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked crc32c: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


# ---------------------------------------------------------------- protobuf, the few fields used


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf writes it (two's complement for a negative step)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _float32(v: float) -> bytes:
    try:
        return struct.pack("<f", v)
    except OverflowError:  # beyond float32's range: TensorBoard would show it as infinite anyway
        return struct.pack("<f", math.copysign(math.inf, v))


def scalar_event(wall_time: float, step: int, scalars: dict[str, float]) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), summary=5 {value=1 {tag=1, simple_value=2 (float)}}}."""
    values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + b"\x15" + _float32(v))
                      for tag, v in scalars.items())
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _bytes_field(5, values)


def version_event(wall_time: float) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + _bytes_field(3, FILE_VERSION)


def line_scalars(line: dict) -> dict[str, float]:
    """The numbers of a metrics line (booleans and text left out); `step` is the x axis, not a scalar."""
    return {k: float(v) for k, v in line.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class EventWriter:
    """Append scalar events to a new event file in `logdir`."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.posttrain"
        self.path = self.logdir / name
        self._file = open(self.path, "wb")
        self._file.write(record(version_event(time.time())))

    def add_line(self, line: dict) -> None:
        scalars = line_scalars(line)
        if scalars and isinstance(line.get("step"), int):
            self._file.write(record(scalar_event(time.time(), line["step"], scalars)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_events(logdir: str | Path, lines: list[dict]) -> Path:
    """`logdir` holding one event file with exactly `lines` (earlier event files there are removed)."""
    logdir = Path(logdir)
    for old in logdir.glob(EVENTS_GLOB):
        old.unlink()
    writer = EventWriter(logdir)
    for line in lines:
        writer.add_line(line)
    writer.close()
    return writer.path


def live_dir(ckpt_dir: str | Path) -> Path:
    """Where a run's events go while it trains: OUT.tensorboard, next to its checkpoint folder OUT.checkpoints."""
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir.parent / f"{ckpt_dir.name.removesuffix('.checkpoints')}.tensorboard"


def write_artifact_events(out: str | Path, lines: list[dict]) -> Path:
    """The finished artifact's OUT/tensorboard/ from its final metrics lines; the live folder is removed."""
    out = Path(out)
    path = write_events(out / "tensorboard", lines)
    shutil.rmtree(live_dir(out.parent / f"{out.name}.checkpoints"), ignore_errors=True)
    return path


class LiveEvents:
    """Mirrors a Trainer's metrics lines into `logdir` as they are written.

    The first `sync` starts the file afresh from the lines so far (after a resume: those the checkpoint
    kept, so lines logged after it by the interrupted process do not appear twice).
    """

    def __init__(self, logdir: str | Path):
        self.logdir, self.writer, self.written = Path(logdir), None, 0

    def sync(self, lines: list[dict]) -> None:
        if self.writer is None:
            for old in self.logdir.glob(EVENTS_GLOB):
                old.unlink()
            self.writer = EventWriter(self.logdir)
        for line in lines[self.written:]:
            self.writer.add_line(line)
        self.written = len(lines)
        self.writer.flush()


# ---------------------------------------------------------------- reading back


class EventFileError(ValueError):
    pass


def read_records(path: str | Path) -> list[bytes]:
    """The data of every record of a TFRecord file, checksums verified."""
    raw, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(raw):
        if pos + 12 > len(raw):
            raise EventFileError(f"{path}: truncated record header at byte {pos}")
        header = raw[pos:pos + 8]
        (length,), (crc,) = struct.unpack("<Q", header), struct.unpack("<I", raw[pos + 8:pos + 12])
        if crc != masked_crc(header):
            raise EventFileError(f"{path}: bad length checksum at byte {pos}")
        data = raw[pos + 12:pos + 12 + length]
        if len(data) != length or pos + 16 + length > len(raw):
            raise EventFileError(f"{path}: truncated record at byte {pos}")
        if struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])[0] != masked_crc(data):
            raise EventFileError(f"{path}: bad data checksum at byte {pos}")
        out.append(data)
        pos += 16 + length
    return out


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise EventFileError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return result, pos


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file in `logdir`, in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob(EVENTS_GLOB)):
        for data in read_records(path):
            step, values = 0, []
            for number, _, value in _fields(data):
                if number == 2:
                    step = value - (1 << 64) if value >= 1 << 63 else value
                elif number == 5:
                    for _, _, v in _fields(value):
                        entry = dict((n, x) for n, _, x in _fields(v))
                        if 1 in entry and 2 in entry:
                            values.append((entry[1].decode(), struct.unpack("<f", entry[2])[0]))
            for tag, v in values:
                out.setdefault(tag, []).append((step, v))
    return out


def same_float32(a: float, b: float) -> bool:
    """Whether `b` is `a` stored as a float32 (how TensorBoard keeps scalars)."""
    f = struct.unpack("<f", _float32(a))[0]
    return (math.isnan(f) and math.isnan(b)) or f == b
