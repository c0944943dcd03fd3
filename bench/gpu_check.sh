#!/usr/bin/env bash
# The GPU check in one command (docs/benchmarks.md, "Running the GPU check"):
#   bash bench/gpu_check.sh          on the device machine: installs .whl/*.whl, runs bench/gpu_check.py
#   bash bench/gpu_check.sh --cpu    here: the same steps at tiny size with the project's venv, no wheels
# Other arguments go to bench/gpu_check.py (--budget, --only, --out). Results land in $OUT, else bench/out.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
case " $* " in
  *" --cpu "*|*" --dry-run "*) PY=${PYTHON:-$REPO/.venv/bin/python} ;;
  *)
    PY=${PYTHON:-python3}
    if compgen -G ".whl/*.whl" >/dev/null; then
      # The device image lacks megatron-core (and nothing can be fetched there): the carried wheels.
      SITE=${GROW_WHEEL_SITE:-/tmp/site}
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 2; }
      export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    fi
    ;;
esac
# The project is imported from this tree, as the tests do.
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" bench/gpu_check.py "$@"
