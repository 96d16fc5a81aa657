"""Read an offline W&B run file (.wandb): a LevelDB-style log of protobuf Records."""
import struct
import time

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # ':W&B' + 2-byte magic + 1-byte version; every record chunk also has a 7-byte header


def read_records(path):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, records, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # the writer is still on this record
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return [pb.Record.FromString(r) for r in records]


def finished_records(path, timeout=300.0):
    """The records of a run once its ``exit`` record is on disk. wandb.finish() can return while
    W&B's writer process is still appending to the file."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout:.0f} s")
        time.sleep(0.5)


def summarize(path):
    """(history rows, config keys, run record) of a finished offline run."""
    history, config, run = [], {}, None
    for r in finished_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): i.value_json for i in r.config.update})
        elif kind == "run":
            run = r.run
    return history, config, run
