"""A config for your own table, in one command:

    python -m tabular_mlops.cli.init path/to/table.csv --target Status [--positive-label bad]

reads the table (CSV separator and text encoding inferred, or a Parquet file or folder),
sorts its columns into identifiers, numeric and categorical features and columns left
out (each with a comment saying why), and writes `config/<table>.yaml`: the shipped
config (config/churn.yaml) with its `data` section replaced and every name (experiment,
registered models, study, description) taken from the table. Then:

    mlflow run . -e train_basic --env-manager local -P config=config/<table>.yaml
"""

import argparse
import io
import logging
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, load_config
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.tables import CSV_SUFFIXES, infer_separator, read_table

logger = logging.getLogger(__name__)

# Whole-number columns with this few distinct values (more than two) may be codes
# (a region, a product type) rather than quantities: pointed out, left numeric.
_CODE_MAX_DISTINCT = 12
# A text column with this many distinct values, nearly one per row, is an identifier or
# free text: one-hot encoding it would only memorise rows.
_TEXT_ID_MIN_DISTINCT = 50
_TEXT_ID_MIN_UNIQUE_RATIO = 0.9
_ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|key)$|^id[_\W]", re.IGNORECASE)
# Encodings tried in turn for a CSV file; latin-1 reads any byte, so it comes last.
_ENCODINGS = ("utf-8", "cp1252", "latin-1")


@dataclass
class ColumnRoles:
    """Where each column goes, and the comment that says why."""

    ids: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, str] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableFacts:
    """What `init` read from the table."""

    path: Path
    sep: str | None  # None: not a CSV file
    encoding: str
    rows: int
    frame: pd.DataFrame


def read_facts(path: Path) -> TableFacts:
    """The table at `path` read as `train_basic` will read it with the config written."""
    if not path.exists():
        raise UserInputError(f"table not found: {path}")
    if path.is_dir() or path.suffix.lower() not in CSV_SUFFIXES:
        frame = read_table(path)
        return TableFacts(path, None, "utf-8", len(frame), frame)
    encoding = _encoding_of(path)
    sep = infer_separator(path, encoding)
    frame = read_table(path, sep, encoding)
    return TableFacts(path, sep, encoding, len(frame), frame)


def _encoding_of(path: Path) -> str:
    head = path.read_bytes()[:1_000_000]
    for encoding in _ENCODINGS:
        try:
            head.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return _ENCODINGS[-1]


def column_roles(frame: pd.DataFrame, target: str) -> ColumnRoles:
    roles = ColumnRoles()
    rows = len(frame)
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        values = column.dropna()
        distinct = values.nunique()
        if values.empty:
            roles.left_out[name] = "no values"
        elif distinct == 1:
            roles.left_out[name] = f"the same value ({values.iloc[0]!r}) in every row"
        elif _ID_NAME.search(str(name)) and distinct >= 0.9 * len(values):
            roles.ids[name] = f"named like an identifier, {distinct} distinct values"
        elif distinct == rows and not pd.api.types.is_float_dtype(column):
            roles.ids[name] = "a different value in every row: an identifier"
        elif pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            roles.numeric[name] = _numeric_comment(values, distinct) + _missing(column)
        elif distinct >= _TEXT_ID_MIN_DISTINCT and distinct >= _TEXT_ID_MIN_UNIQUE_RATIO * len(
            values
        ):
            roles.ids[name] = f"text, {distinct} distinct values in {len(values)}: id or free text"
        else:
            roles.categorical[name] = f"{distinct} categories" + _missing(column)
    return roles


def _numeric_comment(values: pd.Series, distinct: int) -> str:
    whole = pd.api.types.is_integer_dtype(values) or (values == values.round()).all()
    if whole and 2 < distinct <= _CODE_MAX_DISTINCT:
        shown = ", ".join(str(v) for v in sorted(values.unique().tolist())[:6])
        return (
            f"{distinct} whole values ({shown}{', ...' if distinct > 6 else ''}): "
            "codes? then move it to categorical_features"
        )
    return f"{values.min():g} to {values.max():g}"


def _missing(column: pd.Series) -> str:
    return f"; {column.isna().mean():.0%} missing" if column.isna().any() else ""


def positive_labels(frame: pd.DataFrame, target: str, given: Sequence[str]) -> list[Any]:
    """The target values that count as positive: `given` as the table spells them,
    nothing for a 0/1 target, else the rarer of two classes."""
    if target not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:12]))
        raise UserInputError(f"--target {target!r} is not a column (columns: {shown})")
    counts = frame[target].dropna().value_counts()
    if len(counts) < 2:
        raise UserInputError(
            f"target {target!r} has {len(counts)} class(es): a classifier needs two"
        )
    classes = list(counts.index)
    if given:
        spelled = {str(value): value for value in classes}
        if unknown := [label for label in given if label not in spelled]:
            raise UserInputError(
                f"--positive-label {', '.join(unknown)} not a value of {target!r} "
                f"(values: {', '.join(spelled)})"
            )
        return [spelled[label] for label in given]
    if len(classes) > 2:
        raise UserInputError(
            f"target {target!r} has {len(classes)} classes ({', '.join(map(str, classes[:10]))}): "
            "name the positive one(s) with --positive-label (repeat it for one-vs-rest)"
        )
    if set(classes) <= {0, 1}:
        return []
    return [counts.index[-1]]  # value_counts sorts by count: the rarer class


def project_name(path: Path) -> str:
    """`Credit Risk.2024.csv` -> `credit-risk`: the name before its first dot, in lower
    case, words joined by -."""
    stem = path.name.split(".")[0]
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "table"


def data_section(
    facts: TableFacts, target: str, positives: list[Any], given: bool, path_text: str
) -> CommentedMap:
    """The `data` section, each column with a comment saying why it is where it is."""
    roles = column_roles(facts.frame, target)
    if not roles.numeric and not roles.categorical:
        raise UserInputError(f"no feature columns left in {facts.path} (see --help)")
    data = CommentedMap(path=path_text)
    if facts.sep is not None:
        _set(data, "sep", facts.sep, "inferred from the first lines")
    if facts.encoding != "utf-8":
        _set(data, "encoding", facts.encoding, "not UTF-8; check that accented text reads right")
    data["target"] = target
    share = facts.frame[target].isin(positives).mean() if positives else None
    if len(positives) == 1:
        why = "" if given else "; the rarer class, or name it with --positive-label"
        _set(data, "positive_label", _plain(positives[0]), f"{share:.1%} of rows{why}")
    elif positives:
        labels = CommentedSeq(_plain(label) for label in positives)
        labels.fa.set_flow_style()
        _set(data, "positive_labels", labels, f"one-vs-rest: {share:.1%} of rows")
    data["id_columns"] = _listed(roles.ids)
    data["numeric_features"] = _listed(roles.numeric)
    data["categorical_features"] = _listed(roles.categorical)
    data["min_rows"] = 100
    data["min_rows_per_class"] = 10
    if roles.left_out:
        lines = ["Left out (listed nowhere, so not used):"]
        lines += [
            f"  {_comment(str(name))}: {_comment(why)}" for name, why in roles.left_out.items()
        ]
        data.yaml_set_comment_before_after_key("min_rows", before="\n".join(lines), indent=2)
    return data


def _set(section: CommentedMap, key: str, value: Any, comment: str) -> None:
    section[key] = value
    section.yaml_add_eol_comment(_comment(comment), key)


def _listed(columns: dict[str, str]) -> CommentedSeq:
    """Column names, one per line (`    - name`), each with its comment, the comments
    aligned."""
    listed = CommentedSeq(columns)
    if not columns:
        listed.fa.set_flow_style()
    column = len("    - ") + max((len(str(name)) for name in columns), default=0) + 2
    for index, why in enumerate(columns.values()):
        listed.yaml_add_eol_comment(_comment(why), index, column=column)
    return listed


def _comment(text: str) -> str:
    """`text` made safe to end a YAML comment: on one line, whatever a column name holds
    (a newline would start a line of YAML of the name's choosing)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _plain(value: Any) -> Any:
    """A table value as YAML writes it: numpy scalars as Python ones."""
    return value.item() if hasattr(value, "item") else value


def write_config(
    facts: TableFacts,
    target: str,
    given_labels: Sequence[str],
    output: Path,
    template: Path = DEFAULT_CONFIG_PATH,
    project_dir: Path | None = None,
) -> Path:
    """Write the config for `facts`'s table to `output`, checked by loading it back: the
    template read and written by ruamel.yaml (its comments kept), every value from the
    table serialized by it, never pasted into the text."""
    positives = positive_labels(facts.frame, target, given_labels)
    name = project_name(facts.path)
    try:
        path_text = str(facts.path.resolve().relative_to((project_dir or Path.cwd()).resolve()))
    except ValueError:
        path_text = str(facts.path.resolve())
    positive_text = ", ".join(map(str, positives)) or "1"
    description = (
        f"{name}: predicts {target} = {positive_text} with a scikit-learn pipeline ending in "
        f"LightGBM, trained on {path_text} ({facts.rows} rows)."
    )
    yaml = _round_trip()
    config = yaml.load(template.read_text(encoding="utf-8"))
    config["data"] = data_section(facts, target, positives, bool(given_labels), path_text)
    tags = CommentedMap(project=name, task="binary-classification")
    tags.fa.set_flow_style()
    _replace(
        config["tracking"],
        experiment_name=name,
        experiment_description=description,
        experiment_tags=tags,
        registered_model_name=f"{name}-classifier",
    )
    _replace(config["tuning"], study_name=f"{name}-lightgbm")
    _replace(config["custom_model"], registered_model_name=f"{name}-service")
    command = (
        f"mlflow run . -e train_basic --env-manager local --experiment-name {name} "
        f"-P {shlex.quote(f'config={output}')}"
    )
    header = (
        f"Config for {path_text}, written by `python -m tabular_mlops.cli.init` from its "
        f"{facts.rows} rows.\nCheck the `data` section, then:\n  {command}"
    )
    _set_header(config, _comment_lines(header))
    config.yaml_set_comment_before_after_key("split", before="\n")  # a blank line after data
    text = io.StringIO()
    yaml.dump(config, text)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text.getvalue(), encoding="utf-8")
    try:
        load_config(partial)  # what we write must be a valid config
    except Exception:
        partial.unlink()
        raise
    partial.replace(output)
    return output


def _round_trip() -> YAML:
    yaml = YAML()  # round trip: comments and layout of the template kept
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _replace(section: CommentedMap, **values: Any) -> None:
    """Set keys of a section the template has, keeping their place and comments."""
    for key, value in values.items():
        if key in section:
            section[key] = value


def _comment_lines(text: str) -> str:
    return "\n".join(_comment(line) for line in text.split("\n"))


def _set_header(config: CommentedMap, text: str) -> None:
    """The file's opening comment replaced by `text`."""
    config.ca.comment = None
    config.yaml_set_start_comment(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tabular_mlops.cli.init",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("table", type=Path, help="a CSV or Parquet file, or a Parquet folder")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument(
        "--positive-label",
        action="append",
        default=[],
        help="the target value that counts as positive (default: the rarer of two; "
        "repeat it to group several classes of a multi-class target, one-vs-rest)",
    )
    parser.add_argument(
        "--output", type=Path, help="the config written (default: config/<table>.yaml)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing config")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    output = args.output or Path("config") / f"{project_name(args.table)}.yaml"
    try:
        if output.exists() and not args.force:
            raise UserInputError(f"{output} exists: pass --force to replace it")
        facts = read_facts(args.table)
        write_config(facts, args.target, args.positive_label, output)
    except UserInputError as error:
        logger.error("%s", error)
        return 2
    logger.info("wrote %s (%d rows, %d columns read)", output, facts.rows, len(facts.frame.columns))
    logger.info(
        "next: mlflow run . -e train_basic --env-manager local --experiment-name %s -P %s",
        project_name(args.table),
        shlex.quote(f"config={output}"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
