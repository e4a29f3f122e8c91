"""Reader of W&B's offline run logs: the `run-<id>.wandb` files of offline-run-* folders.

A .wandb file is a LevelDB-style log (32 KiB blocks of CRC-checked chunks) of
`wandb_internal_pb2.Record` protobufs. The format has been stable across wandb releases while
wandb's own Python readers moved and went away, so the few lines of framing are done here and
only the protobuf classes come from wandb. What a log holds comes back as plain Python values
(OfflineLog); turning runs into collect()'s table is collect_wandb.py's job.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rhmscale.errors import UserError
from rhmscale.store.reading import read_bytes

HEADER = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER_LEN = 7  # ident, magic (uint16), version (uint8)
BLOCK = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32 of (type byte + data), data length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


class CorruptLog(ValueError):
    pass


def log_records(data: bytes) -> Iterator[bytes]:
    """The serialized records of a .wandb log. A record cut short at the end (the writer was
    killed mid-write) ends the log; anything else malformed raises CorruptLog."""
    if len(data) < HEADER_LEN or data[:4] != HEADER:
        raise CorruptLog("not a W&B transaction log")
    magic, version = struct.unpack("<HB", data[4:HEADER_LEN])
    if magic != HEADER_MAGIC or version != 0:
        raise CorruptLog(f"unsupported W&B log header (magic {magic:#x}, version {version})")
    pos, pending = HEADER_LEN, None
    while pos < len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += room
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:  # zero-filled tail
            return
        if kind not in TYPE_CRC or CHUNK_HEADER.size + length > room:
            raise CorruptLog(f"bad chunk header at byte {pos}")
        start, pos = pos + CHUNK_HEADER.size, pos + CHUNK_HEADER.size + length
        if pos > len(data):
            return
        chunk = data[start:pos]
        if zlib.crc32(chunk, TYPE_CRC[kind]) != crc:
            raise CorruptLog(f"checksum mismatch at byte {start - CHUNK_HEADER.size}")
        if kind in (FULL, FIRST) and pending is not None:
            raise CorruptLog(f"record at byte {start} starts inside another record")
        if kind in (MIDDLE, LAST) and pending is None:
            raise CorruptLog(f"record continuation at byte {start} without a start")
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind == MIDDLE:
            pending += chunk
        else:
            yield bytes(pending + chunk)
            pending = None


@dataclass
class OfflineLog:
    """What one .wandb file holds, as plain Python values."""

    path: Path
    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    start_time: float = 0.0
    group: str = ""
    job_type: str = ""


def read_offline_log(path: Path) -> OfflineLog:
    """Parse one run-<id>.wandb file (config, history and summary records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    log = OfflineLog(path, run_id=path.stem.removeprefix("run-"))
    for raw in log_records(read_bytes(path)):  # a regular file of a log's size, or DamagedFile
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            log.run_id = run.run_id or log.run_id
            log.start_time = run.start_time.seconds + run.start_time.nanos / 1e9
            log.group, log.job_type = run.run_group or log.group, run.job_type or log.job_type
            apply_updates(log.config, run.config.update, run.config.remove)
            apply_updates(log.summary, run.summary.update, run.summary.remove)
        elif kind == "config":
            apply_updates(log.config, record.config.update, record.config.remove)
        elif kind == "summary":
            apply_updates(log.summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            apply_updates(row, record.history.item, ())
            log.history.append(row)
    return log


def apply_updates(target: dict[str, Any], updates: Iterable[Any], removes: Iterable[Any]) -> None:
    """Apply protobuf config/summary/history items (key or nested_key + value) to a dict."""
    for item in updates:
        *parents, last = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = item_value(item)
    for item in removes:
        *parents, last = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        node.pop(last, None)


def item_value(item: Any) -> Any:
    """The value of a config/summary/history item, whichever encoding the writer chose."""
    oneofs = item.DESCRIPTOR.oneofs_by_name
    which = item.WhichOneof("value") if "value" in oneofs else None
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    if which is not None:
        return getattr(item, which)
    return json.loads(item.value_json) if item.value_json else None


def find_offline_logs(path: Path) -> list[Path]:
    """run-<id>.wandb files of offline (or synced) run folders under path, recursively."""
    path = Path(path)
    if path.is_file() and path.suffix == ".wandb":
        return [path]
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    found = []
    for folder, subfolders, files in os.walk(path):  # does not follow links (latest-run)
        subfolders.sort()
        if Path(folder).name.startswith(("offline-run-", "run-")):
            logs = sorted(f for f in files if f.startswith("run-") and f.endswith(".wandb"))
            if logs:
                found += [Path(folder) / f for f in logs]
                subfolders.clear()  # files/, logs/, tmp/: nothing more to find inside
    if not found:
        raise UserError(
            f"no offline W&B runs in {path} (expected offline-run-*/run-<id>.wandb folders, "
            "as the wandb/ folder of each run directory holds)"
        )
    return found
