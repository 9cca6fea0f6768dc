"""`python -m sslops <stage>` is how dvc.yaml runs every stage."""

from sslops.cli import main

raise SystemExit(main())
