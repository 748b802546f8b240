"""Test task: write the exact bytes of argv[3] and of $PILOT_TOKEN_INPUT to OUTDIR/<id>.argv and .env.

argv: OUTDIR TOKEN_ID VALUE
"""

import os
import sys
from pathlib import Path

outdir, token_id, value = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(outdir / f"{token_id}.argv").write_bytes(os.fsencode(value))
(outdir / f"{token_id}.env").write_bytes(os.environb[b"PILOT_TOKEN_INPUT"])
