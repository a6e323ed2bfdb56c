"""``python -m baldur.admin [ADDR]``: the standalone admin server (what ``baldur admin`` runs)."""

import sys

from baldur.admin import serve

sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else None))
