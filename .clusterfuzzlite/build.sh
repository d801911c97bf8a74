#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: every target of fuzz/fuzz_targets into
# $OUT with its options (fuzz/options/<t>.options: max_len, timeout,
# rss_limit_mb, dict), its dictionary and its seed corpus (the committed
# seeds and regressions). The fuzz crate is a workspace member, so the
# binaries land in the workspace target directory. fuzz/tests/clusterfuzzlite.rs
# runs this script as the base image would.
cd "$SRC/qconform"
cargo fuzz build -O --debug-assertions
target_dir="${CARGO_TARGET_DIR:-target}"
for src in fuzz/fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  cp "$target_dir/x86_64-unknown-linux-gnu/release/$t" "$OUT/"
  cp "fuzz/options/$t.options" "$OUT/$t.options"
  dict=$(sed -n 's/^dict *= *//p' "fuzz/options/$t.options")
  if [ -n "$dict" ]; then
    cp "fuzz/dictionaries/$dict" "$OUT/$dict"
  fi
  rm -f "$OUT/${t}_seed_corpus.zip"
  for d in "corpus/fuzz/$t" "corpus/regressions/$t"; do
    # Inputs only (not the folder's README.md); zip fails on an empty list.
    inputs=$(cd "$d" && find . -maxdepth 1 -type f ! -name README.md ! -name '.*' | sort)
    if [ -n "$inputs" ]; then
      (cd "$d" && echo "$inputs" | zip -q "$OUT/${t}_seed_corpus.zip" -@)
    fi
  done
done
