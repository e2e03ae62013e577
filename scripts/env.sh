# Sourced by the other scripts: the project-local virtualenv that holds libtorch
# (torch==2.13.0 from PyPI), and the flag that makes torch-sys build against it.
LASTLAYER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LASTLAYER_ROOT
export VIRTUAL_ENV="$LASTLAYER_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
