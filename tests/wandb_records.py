"""Read an offline W&B run file (.wandb): a LevelDB-style log of protobuf Records."""
import struct

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


def summarize(path):
    """(history rows, config keys, run record) of an offline run."""
    history, config, run = [], {}, None
    for r in read_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): i.value_json for i in r.config.update})
        elif kind == "run":
            run = r.run
    return history, config, run
