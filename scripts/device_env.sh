# Source from the repository root on the device machine: `import sgl` (with sgl.lang, sgl.runtime
# and sgl.kernels, linked into sgl/) works from any directory without installing.
#   source scripts/device_env.sh
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c "import sgl.kernels.dispatch, sgl.runtime.executor.attention; print('sgl importable from', sgl.__file__)"
