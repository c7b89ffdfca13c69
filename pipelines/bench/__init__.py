"""`socialstream bench NAME`: speed figures as ratios against a baseline from the same run."""
