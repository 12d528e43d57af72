"""``python -m activeseg``: the same command line as the ``activeseg`` console script."""

from .cli import main

raise SystemExit(main())
