"""Panels, template variables and the dashboard frame every musicsplit dashboard shares.

Built with grafana-foundation-sdk (the build for Grafana 11.6, pinned in
pyproject.toml). Every panel and query names the data source through the
`$datasource` variable, so one JSON file works against any Prometheus the
Grafana instance knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["musicsplit"]
LAST = ReduceDataOptions().calcs(["lastNotNull"]).values(False)


@dataclass(frozen=True)
class Q:
    """One query of a panel: PromQL, its legend, and whether it is read at one instant."""

    expr: str
    legend: str = ""
    instant: bool = False
    heatmap: bool = False


def _targets(builder, queries: list[Q]):
    for i, q in enumerate(queries):
        t = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        t = t.legend_format(q.legend or "__auto")
        if q.instant:
            t = t.instant()
        if q.heatmap:
            t = t.format(PromQueryFormat.HEATMAP)
        builder = builder.with_target(t)
    return builder


def _frame(builder, title: str, description: str, unit: str, w: int, h: int):
    return builder.title(title).description(description).datasource(DATASOURCE).unit(unit).span(w).height(h)


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: (None, base colour), then (value, colour) upwards."""
    return dashboard.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def graph(title: str, description: str, queries: list[Q], unit: str = "short", *, w: int = 12, h: int = 8,
          stacked: bool = False, min_val: float | None = None, max_val: float | None = None) -> timeseries.Panel:
    """A time series panel."""
    p = _frame(timeseries.Panel(), title, description, unit, w, h).fill_opacity(10 if not stacked else 40)
    p = p.legend(VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(cm.LegendPlacement.BOTTOM)
                 .show_legend(True))
    p = p.tooltip(VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    if stacked:
        p = p.stacking(StackingConfig().mode(cm.StackingMode.NORMAL))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    return _targets(p, queries)


def single(title: str, description: str, queries: list[Q], unit: str = "short", *, w: int = 4, h: int = 4,
           steps: dashboard.ThresholdsConfig | None = None, show_name: bool = False,
           sparkline: bool = True) -> stat.Panel:
    """A stat panel: the last value of each query (or, with show_name, the series' legend)."""
    p = _frame(stat.Panel(), title, description, unit, w, h).reduce_options(LAST)
    p = p.graph_mode(cm.BigValueGraphMode.AREA if sparkline else cm.BigValueGraphMode.NONE)
    p = p.color_mode(cm.BigValueColorMode.VALUE if steps else cm.BigValueColorMode.NONE)
    if show_name:
        p = p.text_mode(cm.BigValueTextMode.NAME)
    if steps is not None:
        p = p.thresholds(steps)
    return _targets(p, queries)


def bars(title: str, description: str, queries: list[Q], unit: str = "short", *, w: int = 12, h: int = 8,
         min_val: float | None = None) -> bargauge.Panel:
    """A bar gauge: the last value of each series, side by side (versions, stems, arms)."""
    p = _frame(bargauge.Panel(), title, description, unit, w, h).orientation(cm.VizOrientation.HORIZONTAL)
    p = p.reduce_options(LAST)
    p = p.display_mode(cm.BarGaugeDisplayMode.GRADIENT)
    if min_val is not None:
        p = p.min(min_val)
    return _targets(p, queries)


def distribution(title: str, description: str, query: Q, unit: str = "short", *, w: int = 12,
                 h: int = 8) -> heatmap.Panel:
    """A heatmap of a histogram's buckets over time (the query in heatmap format)."""
    p = _frame(heatmap.Panel(), title, description, unit, w, h).calculate(False)
    return _targets(p, [Q(query.expr, query.legend or "{{le}}", heatmap=True)])


def timeline(title: str, description: str, queries: list[Q], *, w: int = 12, h: int = 6) -> statetimeline.Panel:
    """A state timeline of 0/1 series: a band on the series' row while it is 1."""
    on = dm.ValueMap(options={"1": dm.ValueMappingResult(text="active", color="green", index=0),
                              "0": dm.ValueMappingResult(text="", color="transparent", index=1)})
    p = _frame(statetimeline.Panel(), title, description, "short", w, h).show_value(cm.VisibilityMode.NEVER)
    return _targets(p.mappings([on]), queries)


# -- template variables


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True,
                   sort: dm.VariableSort = dm.VariableSort.NATURAL_ASC) -> dashboard.QueryVariable:
    """A variable filled from `label_values(...)`; `All` matches every value (`.*`)."""
    v = (dashboard.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
         .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(sort).multi(multi))
    if include_all:
        v = v.include_all(True).all_value(".*")
    return v


def namespace_variable() -> dashboard.QueryVariable:
    return query_variable("namespace", "Namespace", "label_values(musicsplit_model_info, namespace)")


def model_variable() -> dashboard.QueryVariable:
    return query_variable("model", "Model", 'label_values(musicsplit_model_info{namespace=~"$namespace"}, model)')


def version_variable(name: str = "version", label: str = "Version", *, multi: bool = True,
                     sort: dm.VariableSort = dm.VariableSort.NATURAL_ASC) -> dashboard.QueryVariable:
    return query_variable(
        name, label, 'label_values(musicsplit_model_info{namespace=~"$namespace", model=~"$model"}, model_version)',
        multi=multi, include_all=multi, sort=sort)


class Board:
    """A dashboard under construction: rows and panels get ids in order; the
    SDK lays panels out left to right, wrapping at 24 columns."""

    def __init__(self, uid: str, title: str, description: str, variables: list):
        self._b = (dashboard.Dashboard(title).uid(uid).description(description).tags(TAGS)
                   .refresh("30s").time("now-6h", "now").timezone("browser").editable()
                   .tooltip(dm.DashboardCursorSync.CROSSHAIR))
        for v in [datasource_variable(), *variables]:
            self._b = self._b.with_variable(v)
        self._next_id = 1

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str) -> "Board":
        self._b = self._b.with_row(dashboard.Row(title).id(self._id()))
        return self

    def add(self, *panels) -> "Board":
        for p in panels:
            self._b = self._b.with_panel(p.id(self._id()))
        return self

    def build(self) -> dm.Dashboard:
        return self._b.build()
