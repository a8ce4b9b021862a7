"""Networks, losses and samplers: plain PyTorch, no file I/O, no params.yaml."""
