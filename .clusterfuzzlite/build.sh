#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: every target of fuzz/fuzz_targets with its
# seed corpus (corpus/fuzz/<target>) and dictionary. The fuzz crate is a
# workspace member, so binaries land in the workspace target directory.
cd "$SRC/qconform"
cargo fuzz build -O --debug-assertions
for src in fuzz/fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  cp "target/x86_64-unknown-linux-gnu/release/$t" "$OUT/"
  if [ -d "corpus/fuzz/$t" ]; then
    (cd "corpus/fuzz/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
  fi
  if [ -f "fuzz/dictionaries/$t.dict" ]; then
    cp "fuzz/dictionaries/$t.dict" "$OUT/$t.dict"
  fi
done
