"""`python -m sslops <stage>` is how dvc.yaml runs every stage, with the code of the project it runs in.

DVC runs a queued or `--temp` experiment in a copy of the project (.dvc/tmp/exps/...), and records the hashes of that
copy's src/ as the stages' code deps. The environment, though, was installed (editable) from one checkout, whose
src/ would be imported instead: code that may have changed since the experiment was queued, so its results would be
recorded against code that did not make them. When the working directory holds its own src/sslops that is not the
package imported, the command runs again with that src/ first on the path, silently: its output is the command's.
"""

import os
import sys
from pathlib import Path

_OWN = Path.cwd() / "src" / "sslops"
if _OWN.is_dir() and _OWN.resolve() != Path(__file__).resolve().parent and "SSLOPS_OWN_CODE" not in os.environ:
    path = os.pathsep.join(p for p in (str(_OWN.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "SSLOPS_OWN_CODE": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "sslops", *sys.argv[1:]], env)

from sslops.cli import main  # noqa: E402 - only once the right package is the one imported

raise SystemExit(main())
