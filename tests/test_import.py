import subprocess
import sys


def test_import_raypipe_is_light():
    """Heavy libraries load lazily: importing the package and its CLI pulls in none of them."""
    code = ("import sys, raypipe, raypipe.cli, raypipe.config, raypipe.store, raypipe.manifest, raypipe.data; "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers', 'ray', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
