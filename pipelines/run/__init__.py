"""What a user runs: `replay`, `live`, `subscribe` and `serve`, each a composition of stages."""
