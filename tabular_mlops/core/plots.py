"""matplotlib for the figures logged to runs, loaded on first use."""

from types import ModuleType

# Agg, drawing each saved figure once (core/agg_once.py says why).
BACKEND = "module://tabular_mlops.core.agg_once"


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (servers and CI have no
    display). Imported when a figure is drawn, not with the library: it takes 0.5 s."""
    import matplotlib

    matplotlib.use(BACKEND)
    import matplotlib.pyplot

    return matplotlib.pyplot
