"""Read-modify-write of saved static files, for the tests that hand-craft damaged ones."""
import copy
import json

from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["StaticFileEdits"]


class StaticFileEdits:
    """The JSON manifest (under metadata ``key``) and tensors of the file at ``path``;
    ``write`` saves an edited copy in ``out_dir``."""

    def __init__(self, path, key, out_dir):
        with safe_open(str(path), framework="pt") as f:
            meta, self.tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        self.key, self.out_dir = key, out_dir
        self.manifest = json.loads(meta[key])

    def manifest_copy(self) -> dict:
        return copy.deepcopy(self.manifest)

    def write(self, name, manifest=None, tensors=None):
        """A copy of the file with ``manifest`` / ``tensors`` replaced (the originals where None)."""
        p = self.out_dir / name
        save_file(self.tensors if tensors is None else tensors, str(p),
                  metadata={self.key: json.dumps(self.manifest if manifest is None else manifest)})
        return p
