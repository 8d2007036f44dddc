# Sourced by run-tests.sh and test-seeds.sh: the same runtime tuning nanoinfer
# applies to itself (see tune_runtime_env in server/cli/main.c), so every runner
# runs the tests alike: OpenBLAS kernels for this CPU, passive OpenMP idle
# threads. Values the caller already set are kept.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512_bf16 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Cooperlake
  elif grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
