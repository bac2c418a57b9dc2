"""matplotlib's Agg backend, without the second drawing of each saved figure.

`pyplot.savefig` draws the figure again once it is saved (`canvas.draw_idle()`, meant for
windows on screen, is a whole synchronous draw on Agg: matplotlib PR #5800 proposed making
it a no-op without a screen and was never merged; checked on matplotlib 3.11.2). MLflow's
evaluation draws its five plots with pyplot: a fifth to a quarter of its time went to
drawings nobody sees (bench.plots). Nothing here is shown on a screen: the redraw is left
out, and what is saved is the same. Canary:
tests/test_workarounds.py::test_pyplot_still_draws_a_figure_again_after_saving_it.
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg


class FigureCanvas(FigureCanvasAgg):
    def draw_idle(self, *args: object, **kwargs: object) -> None:
        """Nothing is on a screen: the next save draws the figure as it is then."""
