"""Stage 4 of the pipeline: export a selected candidate as a slim, standard PyTorch model."""
