"""Validation against published serving runs: rebuild each run (`rebuild`), predict it
(`predict`: a static batch in closed form, a request stream through the simulator), compare
every metric it reports and summarise (`report`).

    from meshplan.serve.validate import load_serving_runs, validate
    result = validate(load_serving_runs())   # {"rows": [...], "summary": {...}}
"""

from meshplan.serve.validate.case import ServeCase, StaticBatch, Unbuildable
from meshplan.serve.validate.predict import Prediction, predict
from meshplan.serve.validate.rebuild import build_case
from meshplan.serve.validate.report import load_serving_runs, validate, validate_row

__all__ = ["Prediction", "ServeCase", "StaticBatch", "Unbuildable", "build_case",
           "load_serving_runs", "predict", "validate", "validate_row"]
