"""Raw edits of a safetensors file for the tests that hand-craft damaged files."""
import json
import struct

__all__ = ["split_file", "write_file", "edited_metadata"]


def split_file(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_file(path, header, data):
    """The inverse of split_file (the header re-serialized as given)."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edited_metadata(path, out, key, edit):
    """``path`` written to ``out`` with the JSON of its ``__metadata__[key]`` changed in place by ``edit``."""
    header, data = split_file(path)
    value = json.loads(header["__metadata__"][key])
    edit(value)
    header["__metadata__"][key] = json.dumps(value)
    write_file(out, header, data)
    return out
