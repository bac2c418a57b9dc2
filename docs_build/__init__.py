"""The documentation's generated pages (MkDocs, `docs/`): each entry point's parameter table
from its one declaration (tabular_mlops.jobs.entry_points) and the configuration reference
from the pydantic schema (tabular_mlops.core.config). Tooling: not in the wheel.

    python -m docs_build           write them
    python -m docs_build --check   exit 1 when a written page differs from what it would be

The benchmark pages are written by the benches themselves (bench.pages), the screenshots by
the browser tests (UPDATE_SCREENSHOTS=1)."""
