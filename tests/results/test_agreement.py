"""A table reproduces its reference when every column that does not measure time agrees
within the tolerance stated for it; the published tables are rendered from the committed reference."""


import pandas as pd
import pytest

from collide.errors import DataError
from collide.results.agreement import EXACT, GRADIENT, compare_tables
from collide.results.published import BLOCKS, render
from tests.support import PROJECT as ROOT


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "row": [0, 1], "method": ["gradient", "exact"], "valid_vertices": [5, 5],
        "vertex_avg_distance": [10.0, 8.0], "success_rate": [1.0, 1.0], "solver_seconds": [3.0, 1.0],
        "invalid_reason": [None, None], "hull_collides": [True, True],
    })


def test_a_table_reproduces_itself_and_time_columns_never_count():
    ref = _table()
    again = ref.assign(solver_seconds=[9.0, 0.1])
    assert compare_tables(ref, again) == []


@pytest.mark.parametrize(("row", "factor", "agrees"), [
    (0, 1 + GRADIENT.rtol / 2, True),   # a gradient vertex may move by its measured bound
    (0, 1 + GRADIENT.rtol * 2, False),
    (1, 1 + EXACT.rtol / 2, True),      # an LP optimum to its tolerance only
    (1, 1 + GRADIENT.rtol / 2, False),
])
def test_each_method_has_its_own_tolerance(row, factor, agrees):
    ref = _table()
    moved = ref.copy()
    moved.loc[row, "vertex_avg_distance"] *= factor
    problems = compare_tables(ref, moved)
    assert (problems == []) is agrees
    if not agrees:
        assert problems[0].startswith(f"row {row}: vertex_avg_distance")


def test_integers_flags_and_rows_must_be_equal():
    ref = _table()
    assert compare_tables(ref, ref.assign(valid_vertices=[5, 4]))[0].startswith("row 1: valid_vertices")
    assert compare_tables(ref, ref.assign(hull_collides=[True, False]))[0].startswith("row 1: hull_collides")
    problems = compare_tables(ref, ref.iloc[:1])
    assert "1 rows against the reference's 2" in problems[0] and "not in the table" in problems[1]
    assert "missing" in compare_tables(ref, ref.drop(columns="success_rate"))[0]
    # NaN agrees with NaN only.
    nan = ref.assign(success_rate=[float("nan"), 1.0])
    assert compare_tables(nan, nan) == [] and compare_tables(nan, ref) != []


def test_a_table_of_another_problem_says_so_in_a_line_instead_of_every_column():
    """The MLP's table against LeNet-5's reference (the committed ones): one line naming
    the model and the layer, not a difference per column per row."""
    mlp = pd.read_parquet(ROOT / "data" / "reference" / "mnist-mlp.parquet")
    lenet = pd.read_parquet(ROOT / "data" / "reference" / "mnist-lenet5.parquet")
    assert len(compare_tables(lenet, mlp.drop(columns=["model", "layer"]))) > 10  # what it would list
    problems = compare_tables(lenet, mlp)
    assert [p.split(":")[:2] for p in problems] == [["model", " mnist-mlp against the reference's mnist-lenet5"],
                                                    ["layer", " relu1 against the reference's relu3"]]
    assert compare_tables(mlp, mlp.assign(experiment="mnist-b")) == []  # a run's own name: the same problem
    # Another checkpoint of the same model is the same problem: its rows are compared.
    other = compare_tables(mlp, mlp.assign(model_sha256="another checkpoint"))
    assert other and all(p.startswith(f"row {k}: model_sha256") for k, p in enumerate(other))


def test_a_summary_table_is_refused_with_what_can_be_compared():
    """A summary (no row column) was an internal error (KeyError); it is bad input now."""
    summary = pd.read_parquet(ROOT / "data" / "reference" / "transfer-summary.parquet")
    for reference, table in ((summary, summary), (_table(), summary), (summary, _table())):
        with pytest.raises(DataError, match="has no 'row' column: it is not a table of rows"):
            compare_tables(reference, table)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_published_block_renders_from_the_committed_reference(name):
    """Each results block of the docs is written from its table in data/reference/, one line per row."""
    file, write = BLOCKS[name]
    frame = pd.read_parquet(ROOT / "data" / "reference" / file)
    page = f"<!-- generated: {name} -->\nplaceholder\n<!-- end generated -->"
    out = render(page, ROOT / "data" / "reference")
    assert "placeholder" not in out and out.endswith("<!-- end generated -->")
    assert write(frame) in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) > 1  # a header and at least one row


def test_blocks_that_read_no_table_are_called():
    page = "a\n<!-- generated: hello -->\nx\n<!-- end generated -->\nb"
    assert render(page, ROOT / "data" / "reference", extra={"hello": lambda: "hi\n"}) == (
        "a\n<!-- generated: hello -->\nhi\n<!-- end generated -->\nb")


def test_an_unknown_block_is_named():
    with pytest.raises(KeyError, match="unknown generated block 'nope'"):
        render("<!-- generated: nope -->\nx\n<!-- end generated -->", ROOT / "data" / "reference")


def test_collide_compare_exits_by_agreement(tmp_path, capsys):
    from flows.cli import main

    ref, same, moved = tmp_path / "ref.parquet", tmp_path / "same.parquet", tmp_path / "moved.parquet"
    _table().to_parquet(ref)
    _table().assign(solver_seconds=[1.0, 2.0]).to_parquet(same)
    _table().assign(valid_vertices=[5, 3]).to_parquet(moved)
    assert main(["compare", str(ref), str(same)]) == 0
    assert "reproduces" in capsys.readouterr().out
    assert main(["compare", str(ref), str(moved)]) == 1
    assert "DIFFERS: row 1: valid_vertices: 3 against the reference's 5" in capsys.readouterr().out
