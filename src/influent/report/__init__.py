"""The HTML report: collect a run's results into a record, save it, and render one self-contained file.

    >>> from influent.report import explain
    >>> explain(model, task, (Xtr, ytr), (Xq, yq), "out/", attributor={"damping": 1e-3})   # -> out/report.html
"""
from .explain import Stages, explain, versions
from .html import render, write_report
from .record import Record, collect
from .views import as_image, default_show, image_show, text_show

__all__ = ["explain", "collect", "Record", "render", "write_report", "Stages", "versions",
           "image_show", "text_show", "default_show", "as_image"]
