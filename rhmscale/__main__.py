"""`python -m rhmscale`: the `rhmscale` command, where its entry-point script is not installed
(a checkout on PYTHONPATH, as on the bench's GPU machines)."""

from rhmscale.cli import main

main()
