"""Test task: write the exact bytes of argv[3] and of $PILOT_TOKEN_INPUT to OUTDIR/<id>.argv and .env.

argv: OUTDIR TOKEN_ID VALUE
"""

import os
import sys

outdir, token_id, value = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(outdir, token_id + ".argv"), "wb") as file:
    file.write(os.fsencode(value))
with open(os.path.join(outdir, token_id + ".env"), "wb") as file:
    file.write(os.environb[b"PILOT_TOKEN_INPUT"])
