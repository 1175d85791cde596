#!/usr/bin/env bash
# Pack the environment executors need: a fresh virtualenv with dser-spark installed as a wheel (not
# editable: executors import it from the archive) plus its pinned dependencies, packed with venv-pack.
#
#   scripts/pack_env.sh [OUTPUT]      # default dist/dser-spark-env.tar.gz
#
# Prints the spark-submit line that ships it. PYTHON picks the interpreter (default python3, 3.11);
# COMPRESS_LEVEL the gzip level (default 4; 1 packs ~3x faster into a larger file). Keep the .tar.gz / .tgz
# ending: Spark unpacks those with tar, which keeps the executable bits (its own .tar reader does not).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-dist/dser-spark-env.tar.gz}")"
case "$out" in *.tar.gz|*.tgz) ;; *) echo "pack_env: OUTPUT must end in .tar.gz or .tgz" >&2; exit 2 ;; esac
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
echo "pack_env: building the dser-spark wheel" >&2
"$python" -m pip wheel -q --no-deps -w "$work/wheel" .
echo "pack_env: installing it with its pinned dependencies into a fresh virtualenv" >&2
"$python" -m venv --copies "$work/env"  # real interpreter files: Spark refuses archive symlinks pointing outside
"$work/env/bin/pip" install -q "$work"/wheel/*.whl venv-pack==0.2.0
echo "pack_env: packing with venv-pack into $out" >&2
rm -f "$out"
# executors run their own Spark (the Python workers need pyspark's Python code, not its 460 MB of jars),
# compile nothing (torch's headers) and serve nothing (the dashboard and API run next to the warehouse)
site="lib/python*/site-packages"
excludes=()
for dir in pyspark/jars torch/include streamlit fastapi uvicorn uvloop playwright; do
  excludes+=(--exclude "$site/$dir/*")
done
"$work/env/bin/venv-pack" -q -p "$work/env" -o "$out" --compress-level "${COMPRESS_LEVEL:-4}" "${excludes[@]}"
cat <<EOT
packed: $out ($(du -h "$out" | cut -f1))
run the nightly on a cluster with it (driver-side Python: a local venv with the same dser-spark):
  spark-submit --master yarn --deploy-mode client \\
    --archives $out#environment \\
    --conf spark.pyspark.python=./environment/bin/python \\
    --conf spark.pyspark.driver.python=\$PWD/.venv/bin/python \\
    jobs/nightly.py --config conf/cluster.yaml
EOT
