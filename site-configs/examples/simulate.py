#!/usr/bin/env python3
"""Example task of a parameter sweep: one random walk per token, its parameters from the token's fields.

It writes its result to a file of its own under --out (the pilot removes a successful task's folder, so
results go somewhere durable) and a summary line on stdout (the pilot keeps its tail on the token).
"""

import argparse
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    position = furthest = 0
    for _ in range(args.steps):
        position += rng.choice((-1, 1))
        furthest = max(furthest, abs(position))
    line = f"{args.id}\tseed={args.seed}\tsteps={args.steps}\tend={position}\tfurthest={furthest}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.id}.txt").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
