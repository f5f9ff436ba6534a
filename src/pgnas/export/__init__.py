"""Stage 6 of the pipeline: write a candidate as a slim, standard PyTorch model file.

The slim network comes from the slim stage (``pgnas.slim``, re-exported here as ``slim_model``);
``formats.py`` writes and reads model files (pt, torchscript, onnx), ``from_run.py`` exports a
candidate of a results folder, ``ensemble.py`` averages several in one model, ``predict.py`` uses
an exported model.
"""

from pgnas.export.formats import FORMATS, ExportedModel, load_model
from pgnas.export.from_run import export_candidate, export_run, rebuild_supernet
from pgnas.export.predict import evaluate, predict
from pgnas.slim import SlimResult, slim_model

__all__ = [
    "FORMATS",
    "ExportedModel",
    "SlimResult",
    "evaluate",
    "export_candidate",
    "export_run",
    "load_model",
    "predict",
    "rebuild_supernet",
    "slim_model",
]
