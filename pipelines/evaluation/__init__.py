"""`socialstream eval` and `train-predictor`: predictions scored on labelled items, on
generated scenes with their truth, and turns against who-spoke-when."""
