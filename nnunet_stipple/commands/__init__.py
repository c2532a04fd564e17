"""Console commands (``nnUNetv2_stipple_*``): thin argparse wrappers over the library's Python API."""
import sys
from contextlib import contextmanager

from nnunet_stipple.errors import StippleInputError


@contextmanager
def input_errors_exit(prog: str):
    """Bad user input ends the command with its message on stderr and exit status 2, without a traceback."""
    try:
        yield
    except StippleInputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2)
