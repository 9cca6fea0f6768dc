#!/usr/bin/env bash
# Make data/ match the committed data.dvc, trying in order: what is already there, the local DVC cache,
# the DVC remote, and (for the default pointer) `sslops fetch-data`: the verified Fashion-MNIST sources and the
# export of scikit-learn's bundled digits, each file checked against its recorded sha256.
set -euo pipefail
dvc status -q data.dvc && exit 0
dvc checkout -q data.dvc 2>/dev/null && dvc status -q data.dvc && exit 0
if [ -n "$(dvc remote list)" ] && dvc pull -q data.dvc; then exit 0; fi
sslops fetch-data
if ! dvc commit -q data.dvc; then
  echo "data/ does not match data.dvc. If you changed the data on purpose, track it with 'dvc add data'." >&2
  exit 1
fi
# Replace the plain copies with links into the DVC cache, so the data is stored once on disk.
dvc checkout -q --relink data.dvc
