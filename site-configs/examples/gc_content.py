#!/usr/bin/env python3
"""Example task: the GC content of a made-up genome named by the token's input.

It stands in for real work (a genome, a parameter set, a file): it reads its input from argv, takes a
moment, prints a result on stdout (the pilot keeps its tail on the token) and exits 0.
"""

import argparse
import hashlib
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--id", required=True)
    args = parser.parse_args()
    seed = int.from_bytes(hashlib.sha256(args.name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    rng = random.Random(seed)
    genome = "".join(rng.choice("ACGT") for _ in range(200_000))
    time.sleep(rng.uniform(0.1, 0.4))
    gc = (genome.count("G") + genome.count("C")) / len(genome)
    print(f"{args.id}\t{args.name}\tGC={gc:.4f}")


if __name__ == "__main__":
    main()
