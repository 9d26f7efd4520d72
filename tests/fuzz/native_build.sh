#!/usr/bin/env bash
# Native coverage for the fuzz targets: atheris instruments Python code only,
# so for the long run the engine (and the buffer module) is built with
# clang's -fsanitize=fuzzer-no-link, and libFuzzer (no main) is preloaded so
# that the engine's coverage counters register with the same libFuzzer that
# atheris drives ("Using preloaded libfuzzer" in its first lines).
#
#   bash tests/fuzz/native_build.sh OUT     # OUT: a new directory
#   LD_PRELOAD=OUT/libfuzzer_no_main.so PYTHONPATH=OUT/site \
#       python tests/fuzz/fuzz_capi.py [libFuzzer flags] CORPUS...
#
# Needs clang and its compiler-rt (Debian: clang-14, libclang-rt-14-dev). The
# build is a wheel of this checkout's committed HEAD (copied to OUT/src, so
# the checkout's own build files are not touched), unpacked into OUT/site;
# the installed tcalloc is left alone.
set -euo pipefail
out=$(realpath -m "${1:?usage: native_build.sh OUT}")
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out/src" "$out/dist" "$out/site"
git -C "$here" archive HEAD | tar -x -C "$out/src"
CC=clang LDSHARED="clang -shared -pthread" CFLAGS="-fsanitize=fuzzer-no-link" \
    pip wheel "$out/src" --no-deps -w "$out/dist"
python -m zipfile -e "$out"/dist/tcalloc-*.whl "$out/site"
rt=$(clang -print-file-name=libclang_rt.fuzzer_no_main-x86_64.a)
if [ ! -f "$rt" ]; then
    rt=$(ls "$(clang -print-resource-dir)"/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a)
fi
clang++ -shared -fPIC -o "$out/libfuzzer_no_main.so" \
    -Wl,--whole-archive "$rt" -Wl,--no-whole-archive -lpthread
echo "LD_PRELOAD=$out/libfuzzer_no_main.so PYTHONPATH=$out/site"
