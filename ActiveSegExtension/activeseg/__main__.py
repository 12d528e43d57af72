"""``python -m activeseg``: the same command line as the ``activeseg`` console script."""

from activeseg.cli.main import main

raise SystemExit(main())
