"""`python -m mlops.cli`: the `mlops` command without its console script."""

from mlops.cli import main

raise SystemExit(main())
