# Sourced by setup.sh, train.sh and test.sh: builds PySpark's wheel once per machine and
# points every `uv pip install` at it (UV_FIND_LINKS).
#
# Why: PySpark is published on PyPI as a source archive only (450 MB). uv builds it for each
# environment it makes, about 20 s, and keeps each build in its cache; where its cache
# cannot be revalidated (a proxy that drops ETag and Cache-Control, as on the project's CI
# machines) every build is a new 1.4 GB cache entry: 44 of them (60 GB) filled the disk CI
# ran on (uv 0.13.9). With the wheel here, .venv, `--env-manager uv` runs and the model's
# isolated checks install it in under a second, and uv's cache stays the size it is. It can
# go once PySpark publishes a wheel.
# TABULAR_MLOPS_WHEELHOUSE moves it; deleting it is safe (it is built again).
wheelhouse=${TABULAR_MLOPS_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/tabular-mlops/wheelhouse}
pyspark_pin=$(grep -E '^pyspark==' requirements.lock | cut -d' ' -f1)
if ! compgen -G "$wheelhouse/pyspark-${pyspark_pin#pyspark==}-*.whl" >/dev/null; then
    echo "wheelhouse: building $pyspark_pin's wheel into $wheelhouse (once per machine)" >&2
    mkdir -p "$wheelhouse"
    # Built aside, then renamed into place: an interrupted build leaves no partial wheel.
    building=$(mktemp -d "$wheelhouse/.building-XXXXXX")
    .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-cache-dir \
        --no-deps --wheel-dir "$building" "$pyspark_pin"
    mv "$building"/pyspark-*.whl "$wheelhouse"/
    rmdir "$building"
fi
export UV_FIND_LINKS=$wheelhouse
