"""`python -m raypipe.train`: probes on a build's shards.

    python -m raypipe.train --data-dir runs/demo --out-dir runs/demo-probe            # Ray Train linear probe
    python -m raypipe.train --sweep --data-dir runs/demo --out-dir runs/demo-sweep    # (layer x position) sweep

The same commands are `raypipe train` and `raypipe sweep`; see probes/linear.py and probes/sweep.py for outputs.
"""

from raypipe.cli import train_app

if __name__ == "__main__":
    train_app()
