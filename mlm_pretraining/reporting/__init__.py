"""What a run reports: the corpus report, the model card and the training-curve pictures."""
