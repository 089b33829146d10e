# Source from the repository root on the device machine: makes `import sgl` (with sgl.runtime and
# sgl.kernels) work without installing, through a symlink shim on PYTHONPATH.
#   source scripts/device_env.sh
_sgl_repo="$(pwd)"
if [ "$(readlink /tmp/shim/sgl/runtime)" != "$_sgl_repo/runtime" ]; then  # jobs side by side share it
  rm -rf /tmp/shim
  mkdir -p /tmp/shim/sgl
  cp -rs "$_sgl_repo/lang/." /tmp/shim/sgl/
  ln -s "$_sgl_repo/runtime" /tmp/shim/sgl/runtime
  ln -s "$_sgl_repo/kernels" /tmp/shim/sgl/kernels
fi
export PYTHONPATH="/tmp/shim${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c "import sgl.kernels, sgl.runtime.executor.attention; print('sgl importable from', sgl.kernels.__file__)"
unset _sgl_repo
