#!/bin/sh
# `make demo`: a fresh local pool of 24 example tasks, processed by two pilots at once (2 slots each).
set -eu
cd "$(dirname "$0")/.."
config=site-configs/local.toml
rm -rf .demo
./pilot.pyz tokens add --config "$config" --lines site-configs/examples/genomes.txt
./pilot.pyz --config "$config" &
first=$!
./pilot.pyz --config "$config"
wait "$first"
echo
./pilot.pyz status --config "$config"
echo
echo "one token, with its attempt history and the tail of its output:"
./pilot.pyz tokens show --config "$config" genomes-9
echo
./pilot.pyz report --config "$config" --html .demo/run.html
echo "open .demo/run.html in a browser: the run's timeline, throughput, durations and utilisation"
