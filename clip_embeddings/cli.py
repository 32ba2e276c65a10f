"""The ``clip-embeddings`` command's old home, kept as a forwarder.

Console-script wrappers made by an install before the move (``pip install -e .`` of 0.1.0) call
``clip_embeddings.cli:main``, and so does ``python -m clip_embeddings.cli``; both keep working.
The command line lives in :mod:`clip_embeddings.apps.cli`.
"""

from .apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
