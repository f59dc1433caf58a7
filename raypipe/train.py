"""`python -m raypipe.train`: probes on a build's shards.

    python -m raypipe.train --data-dir runs/demo --out-dir runs/demo-probe            # Ray Train linear probe
    python -m raypipe.train --sweep --data-dir runs/demo --out-dir runs/demo-sweep    # (layer x position) sweep
    python -m raypipe.train --config configs/loop_probe.yaml                          # a config file's train section

The same commands as `raypipe train` and `raypipe sweep`; the work is in raypipe.probes (linear.py, sweep.py).
"""

if __name__ == "__main__":
    from raypipe.cli import train_main

    train_main()
