"""``python -m mono_quant`` runs the ``mono-quant`` command."""
import sys

from .cli import main

sys.exit(main())
