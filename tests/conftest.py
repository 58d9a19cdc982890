# Root test configuration. Owns only what every test directory shares: scripts/ on sys.path, so
# tests import the test bed as `import testbed` (scripts/testbed.py, stdlib only). Fixtures that
# start real daemons live in tests/integration/conftest.py, not here.

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
