# Sourced by the bench/device_*.sh scripts on a GPU machine without a package registry: the
# wheels in .whl/ (the packages it lacks, for its Python) go into /tmp/site, on PYTHONPATH with
# this checkout; `device_facts FILE` writes the GPU, driver and torch there.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
rhmscale() { python3 -c "from rhmscale.cli import main; main()" "$@"; }
device_facts() {
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    } >"$1" 2>&1
}
