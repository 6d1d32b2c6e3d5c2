"""Joint releases as data frames, Arrow tables, JSON and files; Parquet and frame inputs.

The oracle is pandas / numpy / :mod:`statistics` on the pooled plaintext rows: the frames must
hold the numbers a user would have computed on the union, in the shape pandas users expect.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from veil import stats
from veil.errors import ConfigurationError
from veil.protocols.stats.spec import Regression
from veil.stats import JointResult, frames

COLS = ["age", "bmi", "chol"]
EDGES = [0.0, 25.0, 50.0, 100.0, 300.0]
WANTED = ["count", "mean", "stdev", "min", "max", "median", "quantiles", "correlation",
          "histogram", "linear_regression"]


def _site(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(20, 80, n), "bmi": rng.normal(26, 4, n).round(1),
                         "chol": rng.normal(200, 30, n).round(0)})


@pytest.fixture(scope="module")
def sites() -> list[pd.DataFrame]:
    return [_site(1, 40), _site(2, 50)]


@pytest.fixture(scope="module")
def pooled(sites: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(sites, ignore_index=True)


@pytest.fixture(scope="module")
def release(sites: list[pd.DataFrame]) -> JointResult:
    """One real two-party MPC run with every kind of statistic (about 3 s)."""
    return stats.joint(sites, WANTED, backend="mpc", bins=EDGES)


def _quartiles(col: pd.Series) -> list[float]:
    return statistics.quantiles(col.to_list(), n=4, method="exclusive")


# -- wide: statistic × column -------------------------------------------------------------------
def test_wide_frame_is_statistic_by_column_like_describe(release: JointResult,
                                                         pooled: pd.DataFrame) -> None:
    wide = release.to_pandas()
    assert isinstance(wide, pd.DataFrame)
    assert list(wide.columns) == COLS and wide.index.name == "statistic"
    assert list(wide.index) == ["count", "mean", "stdev", "min", "25%", "50%", "75%", "median",
                                "max"]
    assert all(str(t) == "float64" for t in wide.dtypes)
    ref = pooled.describe()  # pandas' own statistic × column table on the union
    for row in ("count", "mean", "min", "max"):
        np.testing.assert_allclose(wide.loc[row], ref.loc[row], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(wide.loc["stdev"], ref.loc["std"], rtol=1e-3)
    np.testing.assert_allclose(wide.loc["median"], pooled.median(), atol=1e-3)
    for c in COLS:  # quartiles follow statistics.quantiles (method="exclusive"), as documented
        np.testing.assert_allclose(wide.loc[["25%", "50%", "75%"], c], _quartiles(pooled[c]),
                                   atol=1e-3)
    assert release.to_frame().equals(wide)
    # the raw values stay as they were
    assert isinstance(release.values["mean"], np.ndarray) and release["mean"].shape == (3,)


def test_wide_frame_of_one_dimensional_input() -> None:
    x, y = np.arange(1.0, 11.0), np.arange(11.0, 31.0)
    res = stats.joint([x, y], ["count", "mean", "variance"], backend="ckks")
    wide = res.to_pandas()
    assert wide.shape == (3, 1)
    pooled = pd.Series(np.concatenate([x, y]))
    np.testing.assert_allclose(wide.iloc[:, 0], [30, pooled.mean(), pooled.var()], rtol=1e-4)


# -- long (tidy) --------------------------------------------------------------------------------
def test_long_form_has_every_released_number(release: JointResult,
                                             pooled: pd.DataFrame) -> None:
    tidy = release.to_pandas("long")
    assert list(tidy.columns) == list(frames.LONG_COLUMNS)
    assert {str(t) for t in tidy[["statistic", "column", "other"]].dtypes} == {"string"}
    counts = tidy["statistic"].value_counts().to_dict()
    assert counts == {"count": 3, "mean": 3, "stdev": 3, "min": 3, "max": 3, "median": 3,
                      "quantiles": 9, "correlation": 9, "histogram": 12,
                      "linear_regression": 3}
    hist = tidy[tidy["statistic"] == "histogram"]
    for c in COLS:
        rows = hist[hist["column"] == c]
        assert list(rows["bin_low"]) == EDGES[:-1] and list(rows["bin_high"]) == EDGES[1:]
        expect, _ = np.histogram(pooled[c], bins=EDGES)
        np.testing.assert_allclose(rows["value"], expect, atol=1e-6)
    q = tidy[(tidy["statistic"] == "quantiles") & (tidy["column"] == "bmi")]
    assert list(q["probability"]) == [0.25, 0.5, 0.75]
    np.testing.assert_allclose(q["value"], _quartiles(pooled["bmi"]), atol=1e-3)
    corr = tidy[tidy["statistic"] == "correlation"].pivot(index="column", columns="other",
                                                          values="value")
    np.testing.assert_allclose(corr.loc[COLS, COLS], pooled.corr().loc[COLS, COLS], atol=2e-3)
    reg = tidy[tidy["statistic"] == "linear_regression"]
    assert list(reg["column"]) == ["age", "bmi", "intercept"]
    assert set(reg["other"]) == {"chol"}


def test_one_statistic_in_its_natural_shape(release: JointResult,
                                            pooled: pd.DataFrame) -> None:
    hist = release.frame("histogram")
    assert isinstance(hist.index, pd.IntervalIndex) and hist.index.closed == "left"
    assert hist.index[0] == pd.Interval(0.0, 25.0, closed="left")
    assert list(hist.columns) == COLS and hist.to_numpy().sum() == pytest.approx(3 * 90)
    corr = release.frame("correlation")
    assert corr.shape == (3, 3) and list(corr.index) == COLS
    np.testing.assert_allclose(corr, pooled.corr(), atol=2e-3)
    mean = release.frame("mean")
    assert isinstance(mean, pd.Series) and mean.name == "mean"
    np.testing.assert_allclose(mean[COLS], pooled.mean(), rtol=1e-4)
    reg = release.frame("linear_regression")
    assert reg.name == "chol" and list(reg.index) == ["age", "bmi", "intercept"]
    design = np.column_stack([pooled[["age", "bmi"]].to_numpy(float), np.ones(len(pooled))])
    coef, *_ = np.linalg.lstsq(design, pooled["chol"].to_numpy(float), rcond=None)
    np.testing.assert_allclose(reg.to_numpy(), coef, rtol=2e-2, atol=2e-2)
    quart = release.frame("quantiles")
    assert list(quart.index) == [0.25, 0.5, 0.75] and quart.index.name == "probability"
    with pytest.raises(ConfigurationError, match="no statistic 'variance'"):
        release.frame("variance")
    with pytest.raises(ConfigurationError, match="'wide' or 'long'"):
        release.to_pandas("tall")


def test_arrow_and_polars_views(release: JointResult) -> None:
    pa = pytest.importorskip("pyarrow")
    table = release.to_arrow()
    assert isinstance(table, pa.Table) and table.column_names == list(frames.LONG_COLUMNS)
    assert table.num_rows == len(release.to_pandas("long"))


# -- JSON and files ------------------------------------------------------------------------------
def test_json_form_is_plain_data(release: JointResult, pooled: pd.DataFrame) -> None:
    doc = json.loads(release.to_json())
    assert doc["backend"] == "mpc" and doc["parties"] == 2 and doc["columns"] == COLS
    st = doc["statistics"]
    assert st["count"] == 90
    assert st["mean"]["bmi"] == pytest.approx(pooled["bmi"].mean(), rel=1e-4)
    assert st["histogram"]["edges"] == EDGES
    assert st["correlation"]["age"]["age"] == pytest.approx(1.0, abs=2e-3)
    assert set(st["linear_regression"]["coefficients"]) == {"age", "bmi"}
    assert st["linear_regression"]["target"] == "chol"
    assert release.to_dict() == doc


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_written_long_form_reads_back(release: JointResult, tmp_path: Path,
                                      suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = release.write(tmp_path / f"out{suffix}")
    back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    want = release.to_pandas("long")
    assert list(back.columns) == list(want.columns) and len(back) == len(want)
    np.testing.assert_allclose(back["value"], want["value"], rtol=1e-12)
    assert list(back["statistic"]) == list(want["statistic"].astype(str))
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]  # no temporary left over


def test_written_json_reads_back(release: JointResult, tmp_path: Path) -> None:
    path = release.write(tmp_path / "out.json")
    assert json.loads(path.read_text()) == release.to_dict()


@pytest.mark.parametrize(("name", "message"), [
    ("out.xlsx", "unknown file type '.xlsx'"),
    ("out", "unknown file type '\\(none\\)'"),
    ("missing/out.csv", "does not exist"),
])
def test_bad_output_paths_are_refused(tmp_path: Path, name: str, message: str,
                                      release: JointResult) -> None:
    with pytest.raises(ConfigurationError, match=message):
        release.write(tmp_path / name)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ConfigurationError, match="is a directory"):
        frames.check_output_path(tmp_path / "dir.csv")


# -- inputs: Parquet, Arrow, nullable dtypes; clear errors ---------------------------------------
def test_parquet_and_arrow_inputs_give_the_csv_answer(sites: list[pd.DataFrame],
                                                      tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    csv = tmp_path / "a.csv"
    sites[0].to_csv(csv, index=False)
    pq = tmp_path / "b.parquet"
    sites[1].to_parquet(pq, index=False)
    from_files = stats.joint([str(csv), str(pq)], ["count", "mean"], backend="ckks")
    from_frames = stats.joint([pa.Table.from_pandas(sites[0]), sites[1]], ["count", "mean"],
                              backend="ckks")
    pooled = pd.concat(sites)
    for res in (from_files, from_frames):
        assert res.columns == tuple(COLS) or list(res.columns) == COLS
        np.testing.assert_allclose(res["mean"], pooled.mean(), rtol=1e-4)


def test_nullable_and_narrow_numeric_dtypes_are_accepted() -> None:
    a = pd.DataFrame({"n": pd.array([1, 2, 3, 4, 5] * 2, dtype="Int64"),
                      "f": np.array([1.5, 2.5, 3.5, 4.5, 5.5] * 2, dtype=np.float32),
                      "b": pd.array([True, False, True, True, False] * 2, dtype="boolean")})
    b = pd.DataFrame({"n": np.array([6, 7, 8, 9, 10] * 2, dtype=np.int16),
                      "f": np.array([0.5] * 10, dtype=np.float64),
                      "b": np.array([1] * 10, dtype=np.uint8)})
    res = stats.joint([a, b], ["mean"], backend="ckks")
    np.testing.assert_allclose(res["mean"], [5.5, 2.0, 0.8], rtol=1e-4)


def test_nullable_missing_value_is_refused_like_nan() -> None:
    a = pd.DataFrame({"n": pd.array([1, None, 3, 4], dtype="Int64")})
    with pytest.raises(ConfigurationError, match="missing"):
        stats.joint([a, a + 10], ["mean"], backend="ckks")


@pytest.mark.parametrize(("column", "message"), [
    (pd.Series(["a", "b", "a", "c"], dtype="category"), "categorical \\(categories"),
    (pd.Series(["x1", "x2", "x3", "x4"]), "holds text, e.g. 'x1'"),
    (pd.Series(["1,5", "2,5", "3", "4"]), "decimal comma"),
    (pd.Series(pd.date_range("2026-01-01", periods=4)), "dates and times"),
])
def test_non_numeric_columns_get_a_clear_error(column: pd.Series, message: str) -> None:
    a = pd.DataFrame({"age": [30.0, 40.0, 50.0, 60.0], "x": column})
    with pytest.raises(ConfigurationError, match=message) as info:
        stats.joint([a, a.iloc[::-1]], ["mean"], columns=["age", "x"], backend="ckks")
    assert "'x'" in str(info.value)


def test_frames_of_a_handmade_release_without_bins() -> None:
    """No edges known (e.g. a release rebuilt from raw values): bins are numbered."""
    values = {"histogram": np.array([[1.0, 2.0], [3.0, 4.0]]),
              "linear_regression": Regression(features=("x",), coef=np.array([2.0]),
                                              intercept=1.0, iterations=0, converged=True)}
    hist = frames.frame(values, ["x", "y"], "histogram")
    assert isinstance(hist.index, pd.RangeIndex) and hist.loc[1, "y"] == 4.0
    tidy = frames.long(values, ["x", "y"])
    assert tidy.loc[tidy["statistic"] == "histogram", "bin_low"].isna().all()
    assert list(tidy.loc[tidy["statistic"] == "histogram", "value"]) == [1.0, 2.0, 3.0, 4.0]
    assert list(tidy.loc[tidy["statistic"] == "linear_regression", "value"]) == [2.0, 1.0]
