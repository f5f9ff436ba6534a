"""Stage 7 of the pipeline, after export: train a network plainly (``pgnas train``), the search ->
export -> retrain path (``plain.py``)."""

from pgnas.retrain.plain import TrainResult, model_data, train

__all__ = ["TrainResult", "model_data", "train"]
