"""Standard JSON from whatever the outputs hold: NaN and infinities become null (Python's json would write `NaN`,
which other readers refuse), numpy scalars plain numbers. Shared by every module that writes JSON (`Location.write_json`)."""

from __future__ import annotations

import math


def json_safe(value):
    """NaN and infinities become None so that the JSON outputs stay standard JSON."""
    import numpy as np

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
