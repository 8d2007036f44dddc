# gpu_env.sh - sourced by the scripts that run on the GPU machine: puts the
# carried Debian libraries (.gpu/, filled by ../shared/gpu/bundle-debs.sh
# plus OpenBLAS, see gpu_check.sh) and CUDA on the paths.
if [ -f .gpu/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .gpu/unpack.sh
  # Debian's OpenBLAS lives under openblas-pthread/ (the alternatives links
  # that dpkg -x does not create would point there)
  ob=$DEPS/usr/lib/x86_64-linux-gnu/openblas-pthread
  export CPATH=$DEPS/usr/include/x86_64-linux-gnu/openblas-pthread:$DEPS/usr/include/x86_64-linux-gnu:${CPATH:-}
  export LIBRARY_PATH=$ob:${LIBRARY_PATH:-}
  export LD_LIBRARY_PATH=$ob:${LD_LIBRARY_PATH:-}
fi
export PATH=/usr/local/cuda/bin:$PATH
