"""`python -m harness` is the `harness` console script."""

from harness.cli import main

raise SystemExit(main())
