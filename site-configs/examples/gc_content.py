#!/usr/bin/env python3
"""Example task: the GC content of a made-up genome named by the token's input.

It stands in for real work (a genome, a parameter set, a file): it reads its input from argv, takes a
moment, prints a result on stdout (the pilot keeps its tail on the token) and exits 0. With --motifs it
also counts, in the genome, each motif of that file (a stand-in for a shared reference database).
"""

import argparse
import hashlib
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--id", required=True)
    parser.add_argument("--motifs", help="a file of motifs, one a line ('#' starts a comment)")
    args = parser.parse_args()
    seed = int.from_bytes(hashlib.sha256(args.name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    rng = random.Random(seed)
    genome = "".join(rng.choice("ACGT") for _ in range(200_000))
    time.sleep(rng.uniform(0.1, 0.4))
    gc = (genome.count("G") + genome.count("C")) / len(genome)
    counts = ""
    if args.motifs:
        with open(args.motifs, encoding="utf-8") as file:
            motifs = [line.strip() for line in file if line.strip() and not line.startswith("#")]
        counts = "".join(f"\t{motif}={genome.count(motif)}" for motif in motifs)
    print(f"{args.id}\t{args.name}\tGC={gc:.4f}{counts}")


if __name__ == "__main__":
    main()
