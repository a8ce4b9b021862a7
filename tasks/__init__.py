"""DVC stages: one module per stage, each a thin `main()` over pure functions."""
