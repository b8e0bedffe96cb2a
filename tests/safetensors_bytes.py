"""Raw edits of a safetensors file for the tests that hand-craft damaged files."""
import json
import struct

__all__ = ["split_file", "write_file"]


def split_file(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_file(path, header, data):
    """The inverse of split_file (the header re-serialized as given)."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
